"""The report viewer: the study's image beside its report; a phrase lights up its region.

``/dashboard/viewer/studies/{study_uid}`` takes the Study Instance UID, so a PACS or RIS can link
to it. It signs in like the dashboard (viewer role) and keeps its strict CSP: the page carries no
script of its own; ``viewer.js`` shows a phrase's overlay image on hover or keyboard focus. The
image is rendered here from the store (windowed as the workers do it); the report is the text last
posted for the study, else the study's report SR. Grounding runs in this process with the API's
grounding service (one cached model call per image and text); each phrase's overlay is a
transparent PNG of the image's size, so the browser only toggles which one is shown.
"""

from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.ingest import study_instances
from db.jobs import latest_report
from db.models import Instance, Study
from dicom_node.reports import is_report, report_text
from models.grounding import GroundedPhrase
from radlight.errors import ModelError
from radlight.settings import Settings
from services import audit
from services.api.grounding import grounding_service
from services.dashboard.session import ViewerPage
from services.dashboard.web import DashboardRoute, PageError, render
from services.deps import UID_PATTERN, SessionDep, SettingsDep
from services.grounding import (
    GroundingRun,
    InputError,
    NotFoundError,
    display_png,
    overlay_png,
    stored_path,
)

router = APIRouter(route_class=DashboardRoute)
VIEW_SIZE = 1024  # longest side of the image and overlays sent to the browser
StudyUID = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]
PhraseIndex = Annotated[int, Path(ge=0, le=10_000)]


@dataclass(frozen=True)
class Report:
    text: str
    source: str  # "posted" or "report SR"


@dataclass(frozen=True)
class Segment:
    """A run of report text; ``phrase`` is the index of the grounded phrase it is, if any."""

    text: str
    phrase: int | None = None


def _study(session: Session, study_uid: str) -> Study:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_uid)
    ).one_or_none()
    if study is None:
        raise PageError(404, "No such study.")
    return study


def _report(
    session: Session, store_dir: FilePath, study: Study, instances: list[Instance]
) -> Report | None:
    posted = latest_report(session=session, study_id=study.id)
    if posted is not None:
        return Report(posted.text, "posted")
    for instance in instances:
        if not is_report(instance.sop_class_uid):
            continue
        try:
            text = report_text(dcmread(stored_path(store_dir, instance.relative_path)))
        except (NotFoundError, InvalidDicomError, EOFError, ValueError, OSError):
            continue
        if text:
            return Report(text, "report SR")
    return None


def _image(request: Request, instances: list[Instance]) -> tuple[Instance, NDArray[np.uint8]]:
    """The study's first image the viewer can show (reports and unreadable images skipped)."""
    reasons = []
    for instance in instances:
        if is_report(instance.sop_class_uid):
            continue
        try:
            return instance, grounding_service(request).display(instance)
        except (InputError, NotFoundError) as exc:
            reasons.append(str(exc))
    raise PageError(404, "This study has no image the viewer can show. " + " ".join(reasons[:3]))


def _segments(text: str, phrases: list[GroundedPhrase]) -> list[Segment]:
    """The report cut into plain runs and phrases (in order, overlapping phrases dropped)."""
    segments: list[Segment] = []
    at = 0
    for index, grounded in sorted(enumerate(phrases), key=lambda item: item[1].phrase.start):
        start, end = grounded.phrase.start, grounded.phrase.end
        if start < at or end > len(text) or end <= start:
            continue
        if start > at:
            segments.append(Segment(text[at:start]))
        segments.append(Segment(text[start:end], index))
        at = end
    if at < len(text):
        segments.append(Segment(text[at:]))
    return segments


def says(grounded: GroundedPhrase) -> str:
    """What a phrase means, in words for the caption and screen readers."""
    phrase = grounded.phrase
    what = ", ".join(f.replace("_", " ") for f in phrase.findings) or "a place"
    where = " ".join(filter(None, [phrase.laterality, *phrase.locations]))
    if phrase.negated:
        return f"{what}: negated in the report; no region is shown."
    hedge = " (uncertain)" if phrase.uncertain else ""
    if grounded.polygon is None or grounded.heatmap is None:
        return f"{what}{hedge}: no region found ({grounded.reason or 'nothing to point at'})."
    score = f", model score {grounded.score:.2f}" if grounded.score is not None else ""
    return f"{what}{hedge}{f' ({where})' if where else ''}: region outlined on the image{score}."


def _grounded(
    request: Request, instance: Instance, display: NDArray[np.uint8], report: Report | None
) -> tuple[GroundingRun | None, str | None]:
    if report is None:
        return None, None
    try:
        return grounding_service(request).ground_stored(
            instance.sop_instance_uid, display, report.text
        ), None
    except ModelError as exc:
        return None, f"Grounding is unavailable: {exc}"


@dataclass(frozen=True)
class View:
    """What the page and its overlays show: the image, the report, and the grounding of one on
    the other (None, with the problem, when no model can be used)."""

    instance: Instance
    display: NDArray[np.uint8]
    report: Report | None
    run: GroundingRun | None
    problem: str | None


def _view(request: Request, session: Session, settings: Settings, study_uid: str) -> View:
    study = _study(session, study_uid)
    instances = study_instances(session=session, study_id=study.id)
    instance, display = _image(request, instances)
    report = _report(session, settings.store_dir, study, instances)
    run, problem = _grounded(request, instance, display, report)
    return View(instance, display, report, run, problem)


def _scale(display: NDArray[np.uint8]) -> float:
    return float(min(1.0, VIEW_SIZE / max(display.shape)))


@router.get("/viewer/studies/{study_uid}")
def viewer(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: ViewerPage,
    study_uid: StudyUID,
) -> Response:
    """The study's image beside its report, each groundable phrase marked."""
    view = _view(request, session, settings, study_uid)
    instance, display, report, run = view.instance, view.display, view.report, view.run
    phrases = run.phrases if run is not None else []
    audit.by(
        session,
        user.principal,
        "viewer.open",
        request,
        target_type="study",
        target_id=study_uid,
        detail={"sop_instance_uid": instance.sop_instance_uid, "phrases": len(phrases)},
    )
    session.commit()
    rows, columns = display.shape
    return render(
        request,
        "viewer.html",
        user,
        {
            "study_uid": study_uid,
            "report": report,
            "run": run,
            "problem": view.problem,
            "phrases": phrases,
            "segments": _segments(report.text, phrases) if report else [],
            "says": says,
            "rows": rows,
            "columns": columns,
            "scale": _scale(display),
        },
    )


@router.get("/viewer/studies/{study_uid}/image.png")
def viewer_image(
    request: Request,
    session: SessionDep,
    user: ViewerPage,
    study_uid: StudyUID,
) -> Response:
    """The study's image as the viewer shows it (8-bit grey PNG, audited)."""
    study = _study(session, study_uid)
    instance, display = _image(request, study_instances(session=session, study_id=study.id))
    audit.by(
        session,
        user.principal,
        "viewer.image",
        request,
        target_type="instance",
        target_id=instance.sop_instance_uid,
    )
    session.commit()
    return Response(display_png(display, VIEW_SIZE), media_type="image/png")


@router.get("/viewer/studies/{study_uid}/overlays/{index}.png")
def viewer_overlay(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: ViewerPage,
    study_uid: StudyUID,
    index: PhraseIndex,
) -> Response:
    """Phrase ``index``'s region as a transparent PNG the size of the shown image."""
    view = _view(request, session, settings, study_uid)
    if view.run is None or index >= len(view.run.phrases):
        raise PageError(404, view.problem or "No such phrase.")
    rows, columns = view.display.shape
    png = overlay_png(view.run.phrases[index], (rows, columns), VIEW_SIZE)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
