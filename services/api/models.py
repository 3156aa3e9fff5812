"""Model versions in the registry, and the checks routes make against it.

The registry is the folder ``<data_dir>/models`` (see models.registry): every installed version
with its card. Reading it is for operators and admins. A route names a model and either pins a
version or follows the latest; activating a version and setting per-site thresholds are route
changes (``PUT /api/v1/routes/{id}/model`` and ``/thresholds``), checked here against the cards.
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from db.models import Route
from models.card import ModelCard
from models.precision import read_fp16_check, with_precision
from models.registry import ModelEntry, ModelRegistry
from radlight.errors import ModelError
from radlight.settings import Settings
from services.api.config_fields import Identifier, unprocessable
from services.api.schemas import responses
from services.auth import OperatorDep
from services.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/models", tags=["models"])


class LabelOut(BaseModel):
    name: str = Field(examples=["Pneumonia"])
    code: str = Field(description="Code value, scheme and meaning.", examples=["SCT 233604007"])
    meaning: str
    threshold: float | None = Field(description="The card's operating threshold, if it sets one.")


class InputContractOut(BaseModel):
    modalities: list[str] = Field(examples=[["DX", "CR"]])
    view_positions: list[str] = Field(examples=[["PA", "AP"]])
    body_part: str = Field(examples=["CHEST"])
    age_range_years: tuple[int, int] | None = Field(examples=[None])
    population: str | None = None


class ProvenanceOut(BaseModel):
    source: str
    description: str
    source_sha256: str | None


class RouteRef(BaseModel):
    id: int
    name: str
    pinned: bool = Field(description="True when the route pins this version, false if it follows")


class Fp16Out(BaseModel):
    """The version's fp16 copy (``radlight models fp16``, docs/MODELS.md) and how it compared."""

    usable: bool = Field(
        description="A worker set to fp16 would run it: the record names this version's file "
        "and the copy still has its sha256."
    )
    problem: str | None = Field(description="Why a worker would run fp32 instead, when it would.")
    sha256: str | None = Field(
        default=None, description="The copy's sha256; None when its record is unreadable."
    )
    images: int | None = Field(default=None, description="Check images it was compared on.")
    max_probability_difference: float | None = None
    max_heatmap_difference: float | None = Field(
        default=None, description="As a fraction of the range."
    )
    decisions_changed: int | None = None
    provider: str | None = Field(default=None, description="Where the check ran.")
    checked_at: datetime | None = None


_CHECK_FIELDS = set(Fp16Out.model_fields) - {"usable", "problem"}


class ModelVersionOut(BaseModel):
    version: str = Field(examples=["1.0.0"])
    latest: bool
    trained: bool = Field(description="False for untrained test models whose scores mean nothing.")
    task: str
    interface: str
    sha256: str
    file_ok: bool = Field(description="The ONNX file still has the sha256 its card promises.")
    problem: str | None = Field(description="Why the file cannot be used, when it cannot.")
    labels: list[LabelOut]
    input: InputContractOut
    provenance: ProvenanceOut
    intended_use: str
    limitations: list[str]
    routes: list[RouteRef] = Field(description="Enabled or not, the routes that run this version.")
    fp16: Fp16Out | None = Field(description="Its fp16 copy, if one was made.")


class ModelOut(BaseModel):
    name: str = Field(examples=["chexnet-densenet121-untrained"])
    latest_version: str
    versions: list[ModelVersionOut]


def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings.models_dir)


def _file_problem(models: ModelRegistry, entry: ModelEntry) -> str | None:
    try:
        models.verify(entry)
    except ModelError as exc:
        return str(exc)
    return None


def _fp16_out(entry: ModelEntry) -> Fp16Out | None:
    try:
        check = read_fp16_check(entry)
    except ModelError as exc:
        return Fp16Out(usable=False, problem=str(exc))
    if check is None:
        return None
    try:
        with_precision(entry, "fp16")
        problem = None
    except ModelError as exc:
        problem = str(exc)
    return Fp16Out(
        usable=problem is None, problem=problem, **check.model_dump(include=_CHECK_FIELDS)
    )


def _version_out(
    models: ModelRegistry, entry: ModelEntry, latest: str, routes: list[Route]
) -> ModelVersionOut:
    card = entry.card
    problem = _file_problem(models, entry)
    return ModelVersionOut(
        version=card.version,
        latest=card.version == latest,
        trained=card.trained,
        task=card.task,
        interface=card.interface,
        sha256=card.sha256,
        file_ok=problem is None,
        problem=problem,
        labels=[
            LabelOut(
                name=label.name,
                code=f"{label.code.scheme_designator} {label.code.value}",
                meaning=label.code.meaning,
                threshold=label.threshold,
            )
            for label in card.labels
        ],
        input=InputContractOut(
            modalities=list(card.input.modalities),
            view_positions=list(card.input.view_positions),
            body_part=card.input.body_part,
            age_range_years=card.input.age_range_years,
            population=card.input.population,
        ),
        provenance=ProvenanceOut(**card.provenance.model_dump()),
        intended_use=card.intended_use,
        limitations=list(card.limitations),
        routes=[
            RouteRef(id=r.id, name=r.name, pinned=r.model_version is not None)
            for r in routes
            if r.model_name == card.name and (r.model_version or latest) == card.version
        ],
        fp16=_fp16_out(entry),
    )


@router.get("", responses=responses())
def list_models(
    session: SessionDep,
    settings: SettingsDep,
    principal: OperatorDep,
    name: Annotated[Identifier | None, Query(description="Only this model.")] = None,
) -> list[ModelOut]:
    """Every installed model and version with its card's summary and the routes running it."""
    models = registry(settings)
    routes = list(session.scalars(select(Route).order_by(Route.name)))
    by_name: dict[str, list[ModelEntry]] = {}
    for entry in models.list():
        if name is None or entry.name == name:
            by_name.setdefault(entry.name, []).append(entry)
    out = []
    for model_name, entries in sorted(by_name.items()):
        latest = entries[-1].version  # the registry lists versions oldest first
        out.append(
            ModelOut(
                name=model_name,
                latest_version=latest,
                versions=[_version_out(models, e, latest, routes) for e in entries],
            )
        )
    return out


def card_for(settings: Settings, model_name: str, model_version: str | None) -> ModelCard:
    """The card a route with this model would run (the pinned version, or the latest); 422 if the
    registry has no such model or version."""
    models = registry(settings)
    versions = models.versions(model_name)
    if not versions:
        raise unprocessable("model_name", f"no model named {model_name!r} is installed", model_name)
    version = model_version or versions[-1]
    if version not in versions:
        raise unprocessable(
            "model_version",
            f"model {model_name} has no version {version!r}; installed: {', '.join(versions)}",
            model_version,
        )
    for entry in models.list():
        if (entry.name, entry.version) == (model_name, version):
            return entry.card
    raise unprocessable("model_version", f"model {model_name} {version} has an unreadable card")


def check_thresholds(card: ModelCard, thresholds: Mapping[str, float] | None) -> None:
    """Every finding named must be one of the card's labels (values are checked by the schema)."""
    unknown = sorted(set(thresholds or {}) - set(card.label_names))
    if unknown:
        raise unprocessable(
            "thresholds",
            f"model {card.name} {card.version} reports no finding named {', '.join(unknown)}; "
            f"its findings are: {', '.join(card.label_names)}",
            unknown,
        )
