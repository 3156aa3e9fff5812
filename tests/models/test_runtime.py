"""The runtime: one cached session per model file, validated inputs, CAM weights from the graph."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from models import runtime
from models.card import CHEXNET_PREPROCESSING
from models.contract import CAM_WEIGHT_INITIALIZER, read_contract
from models.export import BuiltModel, build_tiny_classifier
from models.preprocess import prepare_batch
from models.registry import ModelRegistry
from models.runtime import (
    Classifier,
    available_providers,
    clear_session_cache,
    get_session,
    load_classifier,
)
from radlight.errors import ModelError, ModelIntegrityError


@pytest.fixture
def classifier(tiny_model: BuiltModel) -> Classifier:
    return Classifier.load(tiny_model.onnx_path, sha256=tiny_model.card.sha256)


def test_tiny_model_has_the_classifier_interface(
    classifier: Classifier, nih_images: list[npt.NDArray[np.uint8]]
) -> None:
    batch, _ = prepare_batch(nih_images, CHEXNET_PREPROCESSING)
    output = classifier.predict(batch)
    assert output.probabilities.shape == (3, 14)
    assert output.probabilities.dtype == np.float32
    assert output.features.shape == (3, 8, 7, 7)
    assert ((output.probabilities > 0) & (output.probabilities < 1)).all()
    assert classifier.cam_weights.shape == (14, 8)
    assert classifier.cam_bias.shape == (14,)
    assert (classifier.input_size, classifier.num_labels) == (224, 14)
    # Features depend on the image, so CAM tests on this model mean something.
    assert not np.allclose(output.features[0], output.features[1])
    session = classifier.session
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "features"]


def test_tiny_model_is_repeatable_and_says_test(tiny_model: BuiltModel, tmp_path: Path) -> None:
    again = build_tiny_classifier(tmp_path)
    assert again.onnx_path.read_bytes() == tiny_model.onnx_path.read_bytes()
    assert build_tiny_classifier(tmp_path / "s1", seed=1).card.sha256 != tiny_model.card.sha256
    assert "Tests" in tiny_model.card.intended_use
    assert tiny_model.card.trained is False
    assert tiny_model.onnx_path.stat().st_size < 10_000
    contract = read_contract(onnx.load(tiny_model.onnx_path))
    assert contract.cam_weight_name == CAM_WEIGHT_INITIALIZER


def test_session_cache_returns_the_same_session(tiny_model: BuiltModel) -> None:
    clear_session_cache()
    sha256 = tiny_model.card.sha256
    first = Classifier.load(tiny_model.onnx_path, sha256=sha256)
    assert Classifier.load(tiny_model.onnx_path, sha256=sha256) is first
    assert get_session(tiny_model.onnx_path, sha256=sha256) is first.session
    clear_session_cache()
    assert Classifier.load(tiny_model.onnx_path, sha256=sha256) is not first


def test_from_registry_entry(tiny_model: BuiltModel, tmp_path: Path) -> None:
    entry = ModelRegistry(tmp_path).install(tiny_model.onnx_path, tiny_model.card)
    loaded = Classifier.from_entry(entry)
    assert loaded is load_classifier(entry)
    assert np.array_equal(
        loaded.cam_weights,
        Classifier.load(tiny_model.onnx_path, sha256=tiny_model.card.sha256).cam_weights,
    )


def test_load_checks_the_sha256(tiny_model: BuiltModel) -> None:
    with pytest.raises(ModelIntegrityError):
        Classifier.load(tiny_model.onnx_path, sha256="0" * 64)


def test_load_of_a_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        Classifier.load(tmp_path / "absent.onnx", sha256="0" * 64)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((1, 3, 224, 224), dtype=np.float64), "float32"),
        (np.zeros((3, 224, 224), dtype=np.float32), r"\[N>=1, 3, 224, 224\]"),
        (np.zeros((0, 3, 224, 224), dtype=np.float32), r"\[N>=1"),
        (np.zeros((1, 1, 224, 224), dtype=np.float32), "got"),
        (np.zeros((1, 3, 256, 256), dtype=np.float32), "got"),
        (np.full((1, 3, 224, 224), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_predict_validates_its_input(
    classifier: Classifier, batch: npt.NDArray[np.float32], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classifier.predict(batch)


def test_predict_refuses_a_list(classifier: Classifier) -> None:
    with pytest.raises(TypeError, match="numpy array"):
        classifier.predict([[0.0]])  # type: ignore[arg-type]


def test_scores_must_follow_from_the_cam_head(classifier: Classifier) -> None:
    contract = replace(classifier.contract, cam_weight=classifier.cam_weights * 2)
    liar = Classifier(classifier.session, contract)
    with pytest.raises(ModelError, match="CAM head"):
        liar.predict(np.ones((1, 3, 224, 224), dtype=np.float32))


def test_providers_prefer_cuda_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"],
    )
    assert available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider"])
    with pytest.raises(ModelError, match="offers none"):
        available_providers()


def test_onnx_is_imported_only_where_a_graph_is_read(tmp_path: Path) -> None:
    """Importing onnx costs a second or more of CPU (models.contract): the API, the node and the
    worker's modules leave it out; the worker's parent imports it before its pool forks, so that
    no child pays for it; parsing a graph imports it on first use."""
    code = (
        "import sys, services.app, dicom_node.node, workers.tasks\n"
        "assert 'onnx' not in sys.modules, 'onnx imported with the modules'\n"
        "workers.tasks._prepare_parent()\n"
        "assert 'onnx' in sys.modules, 'the parent did not import onnx'\n"
    )
    env = {**os.environ, "RADLIGHT_DATA_DIR": str(tmp_path)}
    env.pop("RADLIGHT_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(runtime.__file__).parents[1], env=env
    )


def test_runtime_does_not_need_torch() -> None:
    code = (
        "import sys, models.runtime, models.registry, models.export, models.preprocess, "
        "models.cam; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(runtime.__file__).parents[1])
