"""From HTML form fields to the API's own request models, and their errors back to words.

HTML forms send every field as text (empty when left blank) and leave out unticked boxes; the
API's models (``RoutePatch``, ``DestinationPatch``) then check the values exactly as they do for
JSON clients, so a page can never write what the API would refuse.
"""

from typing import Annotated

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from db.models import SCEncoding
from services.api.destinations import DestinationPatch
from services.api.routes import RoutePatch

Text = Annotated[str, Field(max_length=4096)]
Checkbox = Annotated[str | None, Field(max_length=8)]  # present ("on") when ticked


class FormError(ValueError):
    """What was wrong with a submitted form, in words for the page."""


def text(value: str | None) -> str | None:
    """A blank field means "not set"."""
    stripped = (value or "").strip()
    return stripped or None


def items(value: str | None, *, upper: bool = False) -> list[str]:
    """A comma-separated field as a list, blanks dropped (``"dx, CR"`` -> ``["DX", "CR"]``
    with ``upper``, for DICOM code strings)."""
    parts = [part.strip() for part in (value or "").split(",") if part.strip()]
    return [part.upper() for part in parts] if upper else parts


def number(value: str | None, what: str, kind: type[int] | type[float] = int) -> int | float | None:
    raw = text(value)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise FormError(f"{what} must be a number") from None


def thresholds(value: str | None) -> dict[str, float]:
    """One ``Finding = 0.4`` (or ``Finding: 0.4``) per line."""
    out: dict[str, float] = {}
    for line in (value or "").splitlines():
        if not line.strip():
            continue
        name, sep, raw = line.replace(":", "=", 1).partition("=")
        if not sep or not name.strip():
            raise FormError(f"threshold line {line.strip()!r} is not 'Finding = value'")
        try:
            out[name.strip()] = float(raw)
        except ValueError:
            raise FormError(f"threshold for {name.strip()!r} must be a number") from None
    return out


def problem(exc: Exception) -> str:
    """A refusal from the API's models or handlers as one readable line."""
    if isinstance(exc, ValidationError | RequestValidationError):
        errors = exc.errors()
        parts = []
        for error in errors[:5]:
            loc = [str(p) for p in error.get("loc", ()) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'form'}: {error.get('msg', 'invalid')}")
        return "; ".join(parts)
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc)


class DestinationForm(BaseModel):
    """The destination edit form as posted."""

    name: Text = ""
    host: Text = ""
    port: Text = ""
    ae_title: Text = ""
    sc_encoding: Text = SCEncoding.LOSSLESS.value
    enabled: Checkbox = None

    def patch(self) -> DestinationPatch:
        try:
            encoding = SCEncoding(self.sc_encoding)
        except ValueError:
            raise FormError(f"unknown SC encoding {self.sc_encoding!r}") from None
        return DestinationPatch(
            name=text(self.name),
            host=text(self.host),
            port=number(self.port, "port"),
            ae_title=text(self.ae_title),
            enabled=self.enabled is not None,
            sc_encoding=encoding,
        )


class RouteForm(BaseModel):
    """The route edit form as posted: lists comma-separated, thresholds one per line."""

    name: Text = ""
    priority: Text = ""
    called_ae: Text = ""
    calling_ae: Text = ""
    modalities: Text = ""
    sop_class_uids: Text = ""
    body_parts: Text = ""
    view_positions: Text = ""
    min_age_years: Text = ""
    max_age_years: Text = ""
    model_name: Text = ""
    model_version: Text = ""
    quiet_seconds: Text = ""
    thresholds: Text = ""
    destinations: Annotated[list[int], Field(max_length=32)] = []
    enabled: Checkbox = None
    produce_seg: Checkbox = None
    produce_gsps: Checkbox = None

    def patch(self) -> RoutePatch:
        """Every field is given, so a blank matcher clears it (matches anything)."""
        return RoutePatch(
            name=text(self.name),
            enabled=self.enabled is not None,
            priority=number(self.priority, "priority"),
            called_ae=text(self.called_ae),
            calling_ae=text(self.calling_ae),
            modalities=items(self.modalities, upper=True),
            sop_class_uids=items(self.sop_class_uids),
            body_parts=items(self.body_parts, upper=True),
            view_positions=items(self.view_positions, upper=True),
            min_age_years=number(self.min_age_years, "minimum age"),
            max_age_years=number(self.max_age_years, "maximum age"),
            model_name=text(self.model_name),
            model_version=text(self.model_version),
            destinations=list(self.destinations),
            produce_seg=self.produce_seg is not None,
            produce_gsps=self.produce_gsps is not None,
            quiet_seconds=number(self.quiet_seconds, "quiet period", float),
            thresholds=thresholds(self.thresholds),
        )

    def shown(self) -> dict[str, object]:
        """The values as typed, for showing the form again with its error."""
        values = self.model_dump()
        for box in ("enabled", "produce_seg", "produce_gsps"):
            values[box] = values[box] is not None
        return values
