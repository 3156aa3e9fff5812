"""How a result's stored summary reads on a page: a line for an overlay, a table for a report.

Summaries are JSON written by the workers; an unexpected shape is shown as nothing rather than
breaking the page.
"""

from dataclasses import dataclass
from typing import Any

from db.models import Result, ResultKind
from services.previews import PREVIEW_KINDS


@dataclass(frozen=True)
class Score:
    finding: str
    probability: float
    present: bool


def headline(result: Result) -> str:
    """One line saying what the object holds."""
    summary: dict[str, Any] = result.summary if isinstance(result.summary, dict) else {}
    if result.kind is ResultKind.HEATMAP_SC:
        finding, probability = summary.get("finding"), summary.get("probability")
        if isinstance(finding, str) and isinstance(probability, int | float):
            return f"{finding}: score {probability:.2f}"
    if result.kind is ResultKind.SUMMARY_SC:
        present = summary.get("present")
        if isinstance(present, list):
            return "present: " + ", ".join(map(str, present)) if present else "no finding present"
    if result.kind is ResultKind.GROUNDED_SC:
        sentence, findings = summary.get("sentence"), summary.get("findings")
        if isinstance(sentence, int) and isinstance(findings, list):
            return f"report sentence {sentence}: " + ", ".join(map(str, findings))
    if result.kind is ResultKind.GROUNDED_SR:
        sentences, grounded = summary.get("sentences"), summary.get("grounded_sentences")
        if isinstance(sentences, int) and isinstance(grounded, int):
            return f"{grounded} of {sentences} report sentences grounded"
    return ""


def scores(result: Result) -> dict[str, list[Score]]:
    """A findings report's scores per source image (SOP Instance UID), highest first."""
    if result.kind is not ResultKind.FINDINGS_SR or not isinstance(result.summary, dict):
        return {}
    findings, present = result.summary.get("findings"), result.summary.get("present")
    if not isinstance(findings, dict):
        return {}
    present = present if isinstance(present, dict) else {}
    table: dict[str, list[Score]] = {}
    for image, values in findings.items():
        if not isinstance(values, dict):
            continue
        marked = set(present.get(image) or [])
        rows = [
            Score(str(label), float(p), label in marked)
            for label, p in values.items()
            if isinstance(p, int | float)
        ]
        table[str(image)] = sorted(rows, key=lambda s: -s.probability)
    return table


def previewable(result: Result) -> bool:
    """Objects with pixels the API's preview renders (SC overlays, probability SEG)."""
    return result.kind in PREVIEW_KINDS
