"""The pieces the pneumonia demo needs, without building it: the keras-xception-nhwc preprocessing,
the probabilities-heatmap/1 interface (a tiny model with the demo's names and card), the card's
age range, and the registry's checks of such a model.
"""

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from models.cam import cam_to_image
from models.card import CHEXNET_PREPROCESSING, HeatmapOutputNames, ModelCard, Preprocessing
from models.export import BuiltModel, build_tiny_classifier
from models.pneumonia_demo import (
    GOLDEN_PROBABILITIES,
    INPUT,
    ONNX_SHA256,
    OUTPUTS,
    PREPROCESSING,
    DemoFigures,
    FigureRow,
    auroc,
    demo_card,
)
from models.preprocess import prepare_batch, prepare_image
from models.registry import ModelRegistry
from models.runtime import Classifier, HeatmapModel, load_classifier, load_model
from radlight.errors import ModelError
from tests.pneumonia_build import build_tiny_heatmap_model


def readme_recipe(gray: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """shared/assets/models/README.md's preprocessing, verbatim, on an 8-bit gray image."""
    im = Image.fromarray(gray)
    if im.mode != "RGB":
        im = im.convert("RGB")
    im = im.resize((150, 150), Image.NEAREST)  # type: ignore[attr-defined]
    x: npt.NDArray[np.float32] = np.asarray(im, np.float32) / 127.5 - 1.0
    return x


@pytest.fixture(scope="module")
def tiny_heatmap(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_tiny_heatmap_model(tmp_path_factory.mktemp("tiny-heatmap"))


@pytest.mark.parametrize("shape", [(1416, 1776), (593, 968), (150, 150), (97, 211)])
def test_keras_preprocessing_equals_the_readme_recipe_bit_for_bit(shape: tuple[int, int]) -> None:
    gray = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    prepared = prepare_image(gray, PREPROCESSING)
    expected = readme_recipe(gray)
    assert prepared.tensor.shape == (150, 150, 3)
    assert prepared.tensor.dtype == np.float32
    assert np.array_equal(prepared.tensor, expected)
    assert prepared.tensor.min() >= -1.0
    assert prepared.tensor.max() <= 1.0


def test_keras_preprocessing_maps_the_whole_image_back() -> None:
    gray = np.zeros((300, 600), dtype=np.uint8)
    geometry = prepare_image(gray, PREPROCESSING).geometry
    assert geometry.crop_box() == (0.0, 0.0, 300.0, 600.0)
    assert geometry.scale == (2.0, 4.0)
    # A 5x5 map whose hot cell is (row 1, col 3) lands on that fifth of the image.
    cam = np.zeros((5, 5), dtype=np.float32)
    cam[1, 3] = 1.0
    heat = cam_to_image(cam, geometry)
    assert heat.shape == (300, 600)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert 60 <= row < 120
    assert 360 <= col < 480


def test_keras_preprocessing_of_a_float_image_scales_without_rounding() -> None:
    gray = np.linspace(0.0, 1.0, 200 * 160, dtype=np.float32).reshape(200, 160)
    tensor = prepare_image(gray, PREPROCESSING).tensor
    assert np.allclose(tensor[..., 0], tensor[..., 2])
    assert tensor.min() == pytest.approx(-1.0, abs=0.02)
    assert tensor.max() == pytest.approx(1.0, abs=0.02)


def test_batches_of_the_keras_kind_are_nhwc() -> None:
    images = [np.full((64, 80), v, dtype=np.uint8) for v in (0, 255)]
    batch, geometries = prepare_batch(images, PREPROCESSING)
    assert batch.shape == (2, 150, 150, 3)
    assert (batch[0] == -1.0).all()
    assert (batch[1] == 1.0).all()
    assert geometries[1].original_shape == (64, 80)


def test_preprocessing_fields_must_match_their_kind() -> None:
    fields = PREPROCESSING.model_dump(mode="json")
    with pytest.raises(ValueError, match="does not allow interpolation='bilinear'"):
        Preprocessing.model_validate_json(json.dumps({**fields, "interpolation": "bilinear"}))
    with pytest.raises(ValueError, match="does not allow crop='none'"):
        Preprocessing.model_validate_json(
            json.dumps({**CHEXNET_PREPROCESSING.model_dump(mode="json"), "crop": "none"})
        )
    # A card written before kinds existed is still read, as chexnet.
    old = CHEXNET_PREPROCESSING.model_dump(mode="json")
    del old["kind"]
    assert Preprocessing.model_validate_json(json.dumps(old)).kind == "chexnet"


def test_demo_card_says_what_the_model_is_and_round_trips() -> None:
    card = demo_card(ONNX_SHA256)
    assert (card.name, card.version, card.trained) == ("pneumonia-xception-demo", "0.3.0", True)
    assert card.label_names == ("Pneumonia",)
    assert card.labels[0].code.value == "233604007"
    assert card.interface == "probabilities-heatmap/1"
    assert card.outputs == OUTPUTS
    assert card.input.age_range_years == (1, 5)
    assert card.provenance.source_sha256 is not None
    assert ONNX_SHA256 in card.provenance.description
    text = card.to_yaml().lower()
    for words in ("no licence", "not validated on adults", "0.49", "not for clinical use"):
        assert words in text, words
    assert ModelCard.from_yaml(card.to_yaml()) == card


def test_card_interface_and_outputs_must_agree() -> None:
    fields = demo_card(ONNX_SHA256).model_dump(mode="json")
    with pytest.raises(ModelError, match="do not follow interface"):
        ModelCard.from_yaml(json.dumps({**fields, "interface": "classifier-cam/1"}))
    wrong_columns = {**fields["outputs"], "label_columns": [0, 1]}
    with pytest.raises(ModelError, match="one column per label"):
        ModelCard.from_yaml(json.dumps({**fields, "outputs": wrong_columns}))
    backwards = {**fields["input"], "age_range_years": [5, 1]}
    with pytest.raises(ModelError, match="youngest, oldest"):
        ModelCard.from_yaml(json.dumps({**fields, "input": backwards}))
    no_age = {
        k: v for k, v in fields["input"].items() if k not in ("age_range_years", "population")
    }
    assert (
        ModelCard.from_yaml(json.dumps({**fields, "input": no_age})).input.age_range_years is None
    )
    assert INPUT.population == "pediatric demo model"


def test_heatmap_model_gives_the_common_inference(tiny_heatmap: BuiltModel, tmp_path: Path) -> None:
    entry = ModelRegistry(tmp_path / "models").install(tiny_heatmap.onnx_path, tiny_heatmap.card)
    model = load_model(entry)
    assert isinstance(model, HeatmapModel)
    assert model is load_model(entry)  # cached per process
    assert model.input_shape == (150, 150, 3)
    images = [np.random.default_rng(i).integers(0, 256, (120, 90), dtype=np.uint8) for i in (1, 2)]
    batch, _ = prepare_batch(images, PREPROCESSING)
    inference = model.infer(batch)
    assert inference.probabilities.shape == (2, 1)
    assert inference.heatmaps.shape == (2, 1, 5, 5)
    raw_probs, raw_map = model.session.run(["probs", "gradcam"], {"input": batch})
    assert np.array_equal(inference.probabilities[:, 0], raw_probs[:, 1])  # column 1 = PNEUMONIA
    assert np.array_equal(inference.heatmaps[:, 0], raw_map)
    with pytest.raises(ValueError, match=r"batch must be \[N>=1, 150, 150, 3\]"):
        model.infer(np.zeros((1, 3, 150, 150), dtype=np.float32))
    with pytest.raises(ModelError, match="not a classifier-cam/1 model"):
        load_classifier(entry)


def test_classifier_gives_the_common_inference_too(
    tmp_path: Path, nih_images: list[npt.NDArray[np.uint8]]
) -> None:
    tiny = build_tiny_classifier(tmp_path / "tiny")
    entry = ModelRegistry(tmp_path / "models").install(tiny.onnx_path, tiny.card)
    model = load_model(entry)
    assert isinstance(model, Classifier)
    batch, _ = prepare_batch(nih_images, CHEXNET_PREPROCESSING)
    inference = model.infer(batch)
    output = model.predict(batch)
    assert np.array_equal(inference.probabilities, output.probabilities)
    expected = np.einsum("lc,nchw->nlhw", model.cam_weights, output.features)
    assert inference.heatmaps.shape == (3, 14, 7, 7)
    assert np.allclose(inference.heatmaps, expected, atol=1e-5)


def test_registry_refuses_a_heatmap_model_that_does_not_match_its_card(
    tiny_heatmap: BuiltModel, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    fields = tiny_heatmap.card.model_dump(mode="json")
    renamed = HeatmapOutputNames(
        input="input", probabilities="probs", label_columns=(1,), heatmap="cam"
    )
    card = ModelCard.model_validate_json(
        json.dumps({**fields, "outputs": renamed.model_dump(mode="json")})
    )
    with pytest.raises(ModelError, match="no output 'cam'"):
        registry.install(tiny_heatmap.onnx_path, card)
    too_far = {**fields["outputs"], "label_columns": [2]}
    card = ModelCard.model_validate_json(json.dumps({**fields, "outputs": too_far}))
    with pytest.raises(ModelError, match=r"reads probability columns \(2,\), model has 2"):
        registry.install(tiny_heatmap.onnx_path, card)
    chexnet = {**fields, "preprocessing": CHEXNET_PREPROCESSING.model_dump(mode="json")}
    card = ModelCard.model_validate_json(json.dumps(chexnet))
    with pytest.raises(ModelError, match="model input is 150, card says 224"):
        registry.install(tiny_heatmap.onnx_path, card)


def test_figures_count_accuracy_and_auroc() -> None:
    rows = tuple(
        FigureRow(
            file=name,
            truth="NORMAL" if name.startswith("NORMAL") else "PNEUMONIA",
            probability=p,
            golden=p,
        )
        for name, p in GOLDEN_PROBABILITIES.items()
    )
    figures = DemoFigures(rows)
    assert (figures.correct, round(figures.auroc, 3)) == (13, 0.906)
    assert figures.accuracy == 0.8125
    assert figures.max_golden_difference == 0.0
    assert auroc(np.array([0.1, 0.9, 0.5, 0.5]), np.array([False, True, False, True])) == 0.875
    assert DemoFigures(rows[:3]).max_golden_difference == float("inf")
