"""Phrase parsing against report sentences written for these tests (grounding_sentences.yaml)."""

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.grounding import Phrase, parse_report
from models.grounding.phrases import split_sentences
from models.labels import CHEST_XRAY14_LABELS

SENTENCES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "grounding_sentences.yaml").read_text()
)


def _expected(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "findings": tuple(spec["findings"]),
        "negated": spec.get("negated", False),
        "uncertain": spec.get("uncertain", False),
        "laterality": spec.get("laterality"),
        "locations": tuple(spec.get("locations", ())),
        "report_region": spec["region"],
    }


def _actual(phrase: Phrase) -> dict[str, Any]:
    return {
        "findings": phrase.findings,
        "negated": phrase.negated,
        "uncertain": phrase.uncertain,
        "laterality": phrase.laterality,
        "locations": phrase.locations,
        "report_region": phrase.report_region,
    }


def test_the_sentence_set_covers_what_the_issue_asks() -> None:
    phrases = [p for s in SENTENCES for p in s["phrases"]]
    assert len(SENTENCES) >= 50
    for label in CHEST_XRAY14_LABELS:
        with_label = [p for p in phrases if label in p["findings"]]
        assert any(not p.get("negated") for p in with_label), f"{label}: no positive sentence"
        assert any(p.get("negated") for p in with_label), f"{label}: no negated sentence"
    assert sum(bool(p.get("uncertain")) for p in phrases) >= 10
    assert {p.get("laterality") for p in phrases} >= {"right", "left", "bilateral", None}
    assert {p["region"] for p in phrases} == {"lung", "heart", "mediastinum", "bone"}


@pytest.mark.parametrize("sentence", SENTENCES, ids=[s["text"][:48] for s in SENTENCES])
def test_sentence(sentence: dict[str, Any]) -> None:
    phrases = parse_report(sentence["text"])
    assert [_actual(p) for p in phrases] == [_expected(p) for p in sentence["phrases"]]


def test_offsets_index_the_full_report() -> None:
    text = "FINDINGS: The heart is enlarged.\nNo pneumothorax, but a small right effusion.\n\n" + (
        "IMPRESSION:\n1. Cardiomegaly with pulmonary edema. 2. Nodule of 1.5 cm vs. granuloma."
    )
    phrases = parse_report(text)
    for phrase in phrases:
        assert text[phrase.start : phrase.end] == phrase.text
    assert [p.text for p in phrases] == [
        "The heart is enlarged",
        "No pneumothorax",
        "a small right effusion",
        "Cardiomegaly",
        "pulmonary edema",
        "Nodule of 1.5 cm vs. granuloma",
    ]
    assert [p.sentence_index for p in phrases] == [0, 1, 1, 2, 2, 3]
    assert all(p.matched_by == "lexicon" for p in phrases)


def test_every_sentence_gives_a_phrase_even_without_findings() -> None:
    phrases = parse_report("Comparison: none. Lungs are clear. Heart normal.")
    assert [p.text for p in phrases] == ["none", "Lungs are clear", "Heart normal"]
    assert phrases[0].matched_by is None
    assert not phrases[0].groundable
    assert phrases[2].locations == ("heart",)
    assert phrases[2].groundable


def test_a_short_answer_or_a_year_ends_its_sentence() -> None:
    phrases = parse_report("Pneumothorax? No. Effusion present. Nodule stable since 2019. No mass.")
    assert [(p.text, p.negated) for p in phrases] == [
        ("Pneumothorax?", False),
        ("No", True),
        ("Effusion present", False),
        ("Nodule stable since 2019", False),
        ("No mass", True),
    ]
    assert phrases[0].uncertain  # a question mark after a finding


def test_sentences_skip_headers_numbers_and_blank_lines() -> None:
    text = "IMPRESSION:\n\n 1. No acute disease.\n2) Stable."
    assert [text[a:b] for a, b in split_sentences(text)] == ["No acute disease", "Stable"]
    assert parse_report("") == []
    assert parse_report("  \n ") == []


def test_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="must be str"):
        parse_report(b"No effusion.")  # type: ignore[arg-type]


def test_any_text_gives_phrases_whose_offsets_hold() -> None:
    """Seeded random word salad (headers, decimals, punctuation, non-ASCII): never an error, and
    every phrase is a trimmed, non-empty slice of the text at its offsets."""
    words = [
        "no",
        "effusion",
        ",",
        ";",
        ".",
        "right",
        "left",
        "upper",
        "zone",
        "opacity",
        "cardiomegaly",
        "heart",
        "is",
        "enlarged",
        "cannot",
        "exclude",
        "vs.",
        "1.5",
        "cm",
        ":",
        "IMPRESSION:",
        "\n",
        "and",
        "with",
        "but",
        "pneumothorax",
        "?",
        "!",
        "résumé",
        "肺",
        "--",
        "(",
        ")",
        "base",
    ]
    rng = random.Random(7)
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        for phrase in parse_report(text):
            assert phrase.text
            assert phrase.text == phrase.text.strip()
            assert text[phrase.start : phrase.end] == phrase.text
