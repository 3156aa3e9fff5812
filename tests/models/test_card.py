"""Model cards: strict, round-trip through YAML, and fail with ModelError when malformed."""

from pathlib import Path

import pydantic
import pytest
import yaml

from models.card import (
    CHEXNET_PREPROCESSING,
    IMAGENET_MEAN,
    ModelCard,
    Preprocessing,
    labels_with_codes,
    validate_identifier,
)
from models.export import BuiltModel
from models.labels import CHEST_XRAY14_LABELS, FINDING_CODES
from radlight.errors import ModelError


def _card_dict(card: ModelCard) -> dict[str, object]:
    data: dict[str, object] = card.model_dump(mode="json")
    return data


def test_yaml_round_trip(tiny_model: BuiltModel, tmp_path: Path) -> None:
    card = tiny_model.card
    assert ModelCard.from_yaml(card.to_yaml()) == card
    card.save(tmp_path / "card.yaml")
    assert ModelCard.load(tmp_path / "card.yaml") == card
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_card_content(tiny_model: BuiltModel) -> None:
    card = tiny_model.card
    assert card.label_names == CHEST_XRAY14_LABELS
    effusion = card.labels[2]
    assert effusion.code.value == FINDING_CODES["Effusion"].value
    assert effusion.code.scheme_designator == "SCT"
    assert card.preprocessing.mean == IMAGENET_MEAN
    assert card.input.modalities == ("DX", "CR")
    assert card.input.view_positions == ("PA", "AP")
    assert card.not_for_primary_diagnosis is True
    assert card.trained is False
    assert "TEST" in card.provenance.description


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("", "must be a YAML mapping"),
        ("version: 2024-01-01\n", "non-JSON value"),
    ],
)
def test_malformed_yaml_is_a_model_error(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelCard.from_yaml(text)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sha256": None}, "sha256"),
        ({"trained": "yes"}, "trained"),
        ({"version": 1.0}, "version"),
        ({"not_for_primary_diagnosis": False}, "not_for_primary_diagnosis"),
        ({"sha256": "ABC"}, "sha256"),
        ({"name": "../escape"}, "name"),
        ({"task": "segmentation"}, "task"),
        ({"surprise": 1}, "surprise"),
        ({"labels": []}, "labels"),
    ],
)
def test_invalid_fields_are_model_errors(
    tiny_model: BuiltModel, change: dict[str, object], field: str
) -> None:
    data = _card_dict(tiny_model.card)
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ModelError, match=field):
        ModelCard.from_yaml(yaml.safe_dump(data), source="card.yaml")


def test_missing_nested_field_is_named(tiny_model: BuiltModel) -> None:
    data = _card_dict(tiny_model.card)
    preprocessing = data["preprocessing"]
    assert isinstance(preprocessing, dict)
    del preprocessing["std"]
    with pytest.raises(ModelError, match=r"preprocessing\.std"):
        ModelCard.from_yaml(yaml.safe_dump(data))


def test_unreadable_card_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        ModelCard.load(tmp_path / "missing.yaml")


def test_card_is_frozen_and_revalidated(tiny_model: BuiltModel) -> None:
    card = tiny_model.card
    with pytest.raises(pydantic.ValidationError):
        card.trained = True  # type: ignore[misc]
    assert card.with_sha256("0" * 64).sha256 == "0" * 64
    with pytest.raises(pydantic.ValidationError):
        card.with_sha256("not a digest")


def test_duplicate_labels_are_refused(tiny_model: BuiltModel) -> None:
    data = _card_dict(tiny_model.card)
    labels = data["labels"]
    assert isinstance(labels, list)
    data["labels"] = [labels[0], labels[0]]
    with pytest.raises(ModelError, match="unique"):
        ModelCard.from_yaml(yaml.safe_dump(data))


def test_preprocessing_crop_must_fit() -> None:
    data = CHEXNET_PREPROCESSING.model_dump()
    data["resize_short_side"] = 200
    with pytest.raises(pydantic.ValidationError, match="crop must fit"):
        Preprocessing(**data)


def test_unknown_label_gets_a_local_code() -> None:
    (spec,) = labels_with_codes(["Lung_Lesion"])
    assert spec.code.scheme_designator == "99RADLIGHT"
    assert spec.code.meaning == "Lung Lesion"


@pytest.mark.parametrize("bad", ["", "..", "a/b", ".hidden", "a..b", "a b", "x" * 65, "é"])
def test_identifiers_refuse_path_tricks(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        validate_identifier(bad, "name")


@pytest.mark.parametrize("good", ["chexnet", "1.0.0", "0.0.0-seed0", "a_b.C-9"])
def test_identifiers_accept_plain_names(good: str) -> None:
    assert validate_identifier(good, "name") == good
