"""Result objects: metadata, the DICOM file itself, and a rendered PNG preview.

A result is an AI finding about a patient's image, so every read is audited. Files are served
only from inside the instance store: a recorded path that leads out of it is refused.
"""

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from db.models import Result
from radlight.settings import Settings
from services import audit
from services.api.schemas import ResultDetailOut, ResultOut, responses
from services.auth import ViewerDep
from services.deps import SessionDep, SettingsDep
from services.previews import PREVIEW_KINDS, render_preview
from services.principal import Principal

router = APIRouter(prefix="/api/v1/results", tags=["results"])
ResultId = Annotated[int, Path(ge=1, le=2**63 - 1, examples=[7])]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
DICOM_OK: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/dicom": _BINARY}, "description": "The DICOM Part-10 file."}
}
PNG_OK: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/png": _BINARY}, "description": "A PNG rendering."}
}


def _load(session: SessionDep, result_id: int) -> Result:
    result = session.scalars(
        select(Result).options(selectinload(Result.deliveries)).where(Result.id == result_id)
    ).one_or_none()
    if result is None:
        raise HTTPException(status_code=404, detail=f"no result {result_id}")
    return result


def _stored_file(settings: Settings, result: Result) -> FilePath:
    """The result's file, which must lie inside the store and exist."""
    store = settings.store_dir.resolve()
    path = (store / result.relative_path).resolve()
    if not path.is_relative_to(store):
        raise HTTPException(
            status_code=404,
            detail=f"result {result.id}'s recorded path leads outside the store; refusing it",
        )
    if not path.is_file():
        raise HTTPException(
            status_code=404, detail=f"result {result.id}'s file is missing from the store"
        )
    return path


def _audit_read(
    session: SessionDep, principal: Principal, action: str, request: Request, result: Result
) -> None:
    audit.by(
        session,
        principal,
        action,
        request,
        target_type="result",
        target_id=result.id,
        detail={"sop_instance_uid": result.sop_instance_uid, "kind": result.kind.value},
    )
    session.commit()


@router.get("/{result_id}", responses=responses(404))
def get_result(
    request: Request, session: SessionDep, principal: ViewerDep, result_id: ResultId
) -> ResultDetailOut:
    """A result's metadata: kind, UIDs, model, findings summary, deliveries, where to fetch it."""
    result = _load(session, result_id)
    out = ResultDetailOut(
        **ResultOut.model_validate(result).model_dump(),
        job_id=result.job_id,
        sop_class_uid=result.sop_class_uid,
        sc_encoding=result.sc_encoding,
        created_at=result.created_at,
        dicom_url=f"{router.prefix}/{result.id}/dicom",
        preview_url=f"{router.prefix}/{result.id}/preview.png"
        if result.kind in PREVIEW_KINDS
        else None,
    )
    _audit_read(session, principal, "result.read", request, result)
    return out


@router.get(
    "/{result_id}/dicom",
    response_class=FileResponse,
    responses=DICOM_OK | responses(404),
)
def download_result(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: ViewerDep,
    result_id: ResultId,
) -> FileResponse:
    """The result's DICOM object as stored and sent (Part 10, ``application/dicom``)."""
    result = _load(session, result_id)
    path = _stored_file(settings, result)
    _audit_read(session, principal, "result.download", request, result)
    return FileResponse(
        path, media_type="application/dicom", filename=f"{result.sop_instance_uid}.dcm"
    )


@router.get(
    "/{result_id}/preview.png",
    response_class=Response,
    responses=PNG_OK | responses(404),
)
def preview_result(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: ViewerDep,
    result_id: ResultId,
    max_size: Annotated[
        int, Query(ge=64, le=4096, description="Longest side of the PNG, in pixels.")
    ] = 1024,
) -> Response:
    """A PNG of an image result (Secondary Capture overlays, probability SEG). SR and GSPS
    objects have no pixels: 404 says so (fetch them with ``/dicom``)."""
    result = _load(session, result_id)
    if result.kind not in PREVIEW_KINDS:
        raise HTTPException(
            status_code=404,
            detail=f"result {result_id} is a {result.kind.value}: it has no pixel data to "
            "preview; download the DICOM object instead",
        )
    path = _stored_file(settings, result)
    try:
        png = render_preview(path.read_bytes(), result.kind, max_size)
    except ValueError as exc:
        raise HTTPException(status_code=404, detail=f"result {result_id}: {exc}") from None
    _audit_read(session, principal, "result.preview", request, result)
    return Response(content=png, media_type="image/png")
