"""Routing rules: which of a study's instances each route takes. Pure functions, easy to test."""

from collections.abc import Sequence
from dataclasses import dataclass

from db.models import Route


@dataclass(frozen=True)
class InstanceFacts:
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None


@dataclass(frozen=True)
class StudyFacts:
    called_ae: str | None
    calling_ae: str | None
    instances: Sequence[InstanceFacts]


def _split(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def select_inputs(route: Route, study: StudyFacts) -> list[str]:
    """SOP Instance UIDs of ``study`` that ``route`` takes; empty when the route does not apply."""
    if route.called_ae and route.called_ae != (study.called_ae or ""):
        return []
    if route.calling_ae and route.calling_ae != (study.calling_ae or ""):
        return []
    modalities = {m.upper() for m in _split(route.modalities)}
    sop_classes = _split(route.sop_class_uids)
    return sorted(
        inst.sop_instance_uid
        for inst in study.instances
        if (not modalities or (inst.modality or "").upper() in modalities)
        and (not sop_classes or inst.sop_class_uid in sop_classes)
    )
