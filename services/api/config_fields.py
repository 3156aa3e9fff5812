"""What the configuration routers share: validated field types, partial updates, change records.

Configuration is not patient data, so its reads are not audited; every change is, with the fields
it changed (old and new values), in the same transaction as the change.
"""

import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.card import validate_identifier
from services import audit
from services.deps import UID_PATTERN
from services.principal import Principal

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


def _ae_title(value: str) -> str:
    if not _AE_TITLE.fullmatch(value):
        raise ValueError("an AE title is 1-16 printable ASCII characters, without backslash")
    return value


def _identifier(value: str) -> str:
    return validate_identifier(value, "model name or version")


AETitle = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=16),
    AfterValidator(_ae_title),
    Field(examples=["PACS"], json_schema_extra={"pattern": _AE_TITLE.pattern}),
]
"""An AE title: 1-16 printable ASCII characters, no backslash; surrounding spaces are dropped."""

CodeString = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_upper=True,
        min_length=1,
        max_length=16,
        pattern=r"^[A-Za-z0-9_ ]+$",
    ),
]
"""A DICOM code string (Modality, BodyPartExamined, ViewPosition), upper-cased."""

UID = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=UID_PATTERN)]

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"),
    AfterValidator(_identifier),
]
"""A model name or version: letters, digits and ``._-``, not starting with a dot, no ``..``."""

Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$"
    ),
]
"""A name people choose for a destination or route: letters, digits, space and ``._-``."""

Hostname = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:_-]+$"
    ),
    Field(examples=["10.0.0.5", "pacs.hospital.local"]),
]
"""A host name, IPv4 or IPv6 address (no brackets, no port)."""

Port = Annotated[int, Field(ge=1, le=65535, examples=[104])]

M = TypeVar("M", bound=BaseModel)


def merged(full: type[M], current: Mapping[str, Any], updates: Mapping[str, Any]) -> M:
    """``current`` with ``updates`` applied, validated as a whole ``full`` model (so that rules
    across fields hold after a partial update); a 422 naming the body fields otherwise."""
    try:
        return full.model_validate({**current, **updates})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The fields whose value differs, as ``{field: {"from": old, "to": new}}``."""
    return {
        key: {"from": before.get(key), "to": value}
        for key, value in after.items()
        if before.get(key) != value
    }


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no such {what}")


def conflict(detail: str) -> HTTPException:
    return HTTPException(status_code=409, detail=detail)


def unprocessable(field: str, message: str, value: object = None) -> RequestValidationError:
    """A 422 for a well-formed value that names something unknown (a model version, a finding,
    a destination), in the validation-error shape the schema documents for every 422."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}]
    )


def save_audited(
    session: Session,
    principal: Principal,
    request: Request,
    row: Any,
    *,
    action: str,
    target_type: str,
    detail: dict[str, Any],
) -> None:
    """Write ``row`` and audit it in one commit; a 409 if its name is taken meanwhile."""
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise conflict(f"a {target_type} named {row.name!r} exists already") from None
    audit.by(
        session,
        principal,
        action,
        request,
        target_type=target_type,
        target_id=row.id,
        detail=detail,
    )
    session.commit()


def delete_audited(
    session: Session,
    principal: Principal,
    request: Request,
    row: Any,
    *,
    target_type: str,
    detail: dict[str, Any],
    action: str | None = None,
) -> Response:
    """Delete ``row`` and audit it (``<target_type>.delete`` unless ``action`` says otherwise) in
    one commit; the 204 the DELETE endpoints answer."""
    session.delete(row)
    audit.by(
        session,
        principal,
        action or f"{target_type}.delete",
        request,
        target_type=target_type,
        target_id=row.id,
        detail=detail,
    )
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
