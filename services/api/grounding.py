"""``POST /api/v1/ground``: report text on an image → each phrase's finding, negation and region.

The image is an upload (base64 PNG or JPEG) or a stored instance named by its SOP Instance UID.
Grounding may read a patient's image, so every call is audited (identifiers and counts only,
never the text). The answer names the model that made it and says it is not for primary diagnosis.
"""

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.grounding import GroundedPhrase
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS
from radlight.errors import ModelError
from services import audit
from services.api.schemas import ErrorOut, ReportText, responses
from services.auth import ViewerDep
from services.deps import UID_PATTERN, SessionDep, SettingsDep
from services.grounding import (
    GroundingService,
    InputError,
    NotFoundError,
    decode_base64,
    decode_upload,
    heatmap_png,
    stored_display,
    stored_instance,
    to_unit,
)

router = APIRouter(prefix="/api/v1", tags=["grounding"])

MAX_BODY_BYTES = 24 * 1024**2  # the largest image (16 MiB) as base64, plus the text
MAX_BASE64_CHARS = MAX_BODY_BYTES


def grounding_service(request: Request) -> GroundingService:
    """The app's grounding service (model and cache), made on first use."""
    service: GroundingService | None = getattr(request.app.state, "grounding", None)
    if service is None:
        service = GroundingService(request.app.state.settings)
        request.app.state.grounding = service
    return service


GroundingDep = Annotated[GroundingService, Depends(grounding_service)]


def _body_within_limit(request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(
            status_code=413, detail=f"the request body is larger than {MAX_BODY_BYTES} bytes"
        )


class GroundIn(BaseModel):
    """Report text and exactly one image: ``image_base64`` or ``sop_instance_uid``."""

    model_config = ConfigDict(extra="forbid")
    text: ReportText
    image_base64: str | None = Field(
        default=None,
        max_length=MAX_BASE64_CHARS,
        description="A PNG or JPEG chest X-ray, standard base64.",
    )
    sop_instance_uid: str | None = Field(
        default=None,
        max_length=64,
        pattern=UID_PATTERN,
        description="A stored instance to ground on, decoded and windowed as the workers do.",
        examples=["1.2.826.0.1.3680043.8.498.1"],
    )

    @model_validator(mode="after")
    def _one_image(self) -> "GroundIn":
        if (self.image_base64 is None) == (self.sop_instance_uid is None):
            raise ValueError("send exactly one of image_base64 and sop_instance_uid")
        return self


class BoxOut(BaseModel):
    """A region's bounding box in image pixels (x to the right, y down)."""

    x: float
    y: float
    width: float
    height: float


class GroundedPhraseOut(BaseModel):
    text: str = Field(examples=["Small left pleural effusion"])
    start: int = Field(description="Offset of the phrase's first character in the text.")
    end: int = Field(description="Offset just past its last character.")
    sentence_index: int
    findings: list[str] = Field(examples=[["Effusion"]])
    negated: bool
    uncertain: bool
    laterality: Literal["right", "left", "bilateral"] | None
    locations: list[str] = Field(examples=[["base"]])
    report_region: Literal["lung", "heart", "mediastinum", "bone"] | None
    matched_by: Literal["lexicon", "embedding"] | None
    box: BoxOut | None
    polygon: list[tuple[float, float]] | None = Field(
        description="The region's outline, (x, y) image pixels."
    )
    score: float | None = Field(description="The model's confidence for the phrase's finding.")
    heatmap_png_base64: str | None = Field(
        description="The region heatmap as an 8-bit greyscale PNG on the image grid (255 = 1)."
    )
    reason: str | None = Field(
        description="Why a phrase has no region (negated, no finding, ...).",
        examples=["negated: no region"],
    )


class GroundedImageOut(BaseModel):
    rows: int
    columns: int
    sop_instance_uid: str | None


class GroundOut(BaseModel):
    model_name: str = Field(examples=["chexnet-densenet121"])
    model_version: str = Field(examples=["1.0.0"])
    model_sha256: str
    image: GroundedImageOut
    phrases: list[GroundedPhraseOut]
    notice: str = NOT_FOR_PRIMARY_DIAGNOSIS


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for content the schema alone cannot check."""
    return RequestValidationError(
        [{"loc": ("body", field), "msg": message, "type": "value_error", "input": None}]
    )


def phrase_out(grounded: GroundedPhrase) -> GroundedPhraseOut:
    """The wire form of a ``models.grounding.GroundedPhrase``."""
    phrase = grounded.phrase
    box = None
    if grounded.box is not None:
        x, y, w, h = (float(v) for v in grounded.box)
        box = BoxOut(x=x, y=y, width=w, height=h)
    heatmap = None
    if grounded.heatmap is not None:
        heatmap = base64.b64encode(heatmap_png(grounded.heatmap)).decode("ascii")
    return GroundedPhraseOut(
        text=phrase.text,
        start=phrase.start,
        end=phrase.end,
        sentence_index=phrase.sentence_index,
        findings=list(phrase.findings),
        negated=phrase.negated,
        uncertain=phrase.uncertain,
        laterality=phrase.laterality,
        locations=list(phrase.locations),
        report_region=phrase.report_region,
        matched_by=phrase.matched_by,
        box=box,
        polygon=[(float(x), float(y)) for x, y in grounded.polygon] if grounded.polygon else None,
        score=None if grounded.score is None else float(grounded.score),
        heatmap_png_base64=heatmap,
        reason=grounded.reason,
    )


GROUND_RESPONSES: dict[int | str, dict[str, Any]] = responses(404) | {
    413: {"model": ErrorOut, "description": "The request body is too large."},
    503: {"model": ErrorOut, "description": "No usable classifier is installed."},
}


@router.post("/ground", responses=GROUND_RESPONSES, dependencies=[Depends(_body_within_limit)])
def ground(
    request: Request,
    body: GroundIn,
    session: SessionDep,
    settings: SettingsDep,
    principal: ViewerDep,
    service: GroundingDep,
) -> GroundOut:
    """Ground report text on a chest X-ray: per phrase its finding(s), negation, uncertainty,
    laterality and location, and (unless negated) its region as box, polygon, heatmap and score.

    Runs the registry's classifier in this request (the one synchronous model call the API
    makes). A negated phrase has no region and says so in ``reason``."""
    target: dict[str, Any]
    if body.sop_instance_uid is not None:
        try:
            instance = stored_instance(session, body.sop_instance_uid)
            display = stored_display(settings.store_dir, instance)
        except NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except InputError as exc:
            raise _invalid("sop_instance_uid", str(exc)) from None
        image = to_unit(display)
        target = {"target_type": "instance", "target_id": body.sop_instance_uid}
    else:
        assert body.image_base64 is not None  # the validator allows exactly one
        try:
            image = decode_upload(
                decode_base64(body.image_base64, settings.grounding_max_image_bytes)
            )
        except InputError as exc:
            raise _invalid("image_base64", str(exc)) from None
        target = {"target_type": "upload", "target_id": None}
    try:
        run = service.ground(image, body.text)
    except ModelError as exc:
        raise HTTPException(status_code=503, detail=f"grounding is unavailable: {exc}") from None
    audit.by(
        session,
        principal,
        "grounding.run",
        request,
        **target,
        detail={
            "model": f"{run.model_name} {run.model_version}",
            "phrases": len(run.phrases),
            "text_chars": len(body.text),
        },
    )
    session.commit()
    rows, columns = image.shape
    return GroundOut(
        model_name=run.model_name,
        model_version=run.model_version,
        model_sha256=run.model_sha256,
        image=GroundedImageOut(rows=rows, columns=columns, sop_instance_uid=body.sop_instance_uid),
        phrases=[phrase_out(p) for p in run.phrases],
    )
