"""Routing rules: which of a study's instances each route takes. Pure functions, easy to test.

A route's matcher left empty matches anything. A matcher that names values takes only instances
whose attribute is one of them: an instance without the attribute (no BodyPartExamined, no
ViewPosition, an unknown age) is not taken, as an unknown calling AE does not match a route that
names one. Code strings compare case-insensitively; ages are completed years, both bounds included.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from db.config import split_list
from db.models import Route


@dataclass(frozen=True)
class InstanceFacts:
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    body_part: str | None = None
    view_position: str | None = None
    patient_age_years: int | None = None  # patient-level: compared here, never logged


@dataclass(frozen=True)
class StudyFacts:
    called_ae: str | None
    calling_ae: str | None
    instances: Sequence[InstanceFacts]


def _codes(value: str | None) -> set[str]:
    return {part.upper() for part in split_list(value)}


def _named(wanted: set[str], actual: str | None) -> bool:
    return not wanted or (actual or "").strip().upper() in wanted


def _age_within(route: Route, years: int | None) -> bool:
    if route.min_age_years is None and route.max_age_years is None:
        return True
    if years is None:
        return False
    low = route.min_age_years if route.min_age_years is not None else 0
    high = route.max_age_years if route.max_age_years is not None else years
    return low <= years <= high


def select_inputs(route: Route, study: StudyFacts) -> list[str]:
    """SOP Instance UIDs of ``study`` that ``route`` takes; empty when the route does not apply."""
    if route.called_ae and route.called_ae != (study.called_ae or ""):
        return []
    if route.calling_ae and route.calling_ae != (study.calling_ae or ""):
        return []
    modalities = _codes(route.modalities)
    body_parts = _codes(route.body_parts)
    views = _codes(route.view_positions)
    sop_classes = set(split_list(route.sop_class_uids))
    return sorted(
        inst.sop_instance_uid
        for inst in study.instances
        if _named(modalities, inst.modality)
        and (not sop_classes or inst.sop_class_uid in sop_classes)
        and _named(body_parts, inst.body_part)
        and _named(views, inst.view_position)
        and _age_within(route, inst.patient_age_years)
    )
