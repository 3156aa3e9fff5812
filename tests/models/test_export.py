"""ONNX export: same numbers as torch, CAM weights carried in the graph, repeatable files."""

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from models.cam import class_activation_maps
from models.card import CHEXNET_PREPROCESSING, ModelCard
from models.checksum import sha256_file
from models.contract import (
    CAM_BIAS_INITIALIZER,
    CAM_WEIGHT_INITIALIZER,
    INTERFACE_VERSION,
    read_contract,
)
from models.export import bind_cam_head, build_untrained_chexnet, export_classifier_onnx
from models.preprocess import prepare_batch
from models.runtime import Classifier
from radlight.errors import ModelError
from tests.models.conftest import ExportedChexnet


def _torch_outputs(
    model: torch.nn.Module, batch: npt.NDArray[np.float32]
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        probabilities, features = model(torch.from_numpy(batch))
    return probabilities, features


def test_onnx_matches_torch_on_real_images(
    exported_chexnet: ExportedChexnet, nih_images: list[npt.NDArray[np.uint8]]
) -> None:
    batch, _ = prepare_batch(nih_images, CHEXNET_PREPROCESSING)
    probabilities, features = _torch_outputs(exported_chexnet.model, batch)
    classifier = Classifier.load(exported_chexnet.onnx_path, sha256=exported_chexnet.sha256)
    output = classifier.predict(batch)

    np.testing.assert_allclose(output.probabilities, probabilities.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(output.features, features.numpy(), rtol=0, atol=1e-4)
    # The scores vary between images and are not saturated, so the comparison means something.
    assert float(probabilities.std(dim=0).max()) > 1e-3
    assert float(probabilities.min()) > 0.001
    assert float(probabilities.max()) < 0.999


def test_cam_from_graph_weights_equals_torch_cam(
    exported_chexnet: ExportedChexnet, nih_images: list[npt.NDArray[np.uint8]]
) -> None:
    batch, _ = prepare_batch(nih_images, CHEXNET_PREPROCESSING)
    _, features = _torch_outputs(exported_chexnet.model, batch)
    head = exported_chexnet.model.classifier
    classifier = Classifier.load(exported_chexnet.onnx_path, sha256=exported_chexnet.sha256)
    assert np.array_equal(classifier.cam_weights, head.weight.detach().numpy())
    assert np.array_equal(classifier.cam_bias, head.bias.detach().numpy())

    onnx_cams = class_activation_maps(classifier.predict(batch).features, classifier.cam_weights)
    torch_cams = torch.einsum("lc,nchw->nlhw", head.weight.detach(), features).numpy()
    assert onnx_cams.shape == (len(nih_images), 14, 7, 7)
    np.testing.assert_allclose(onnx_cams, torch_cams, rtol=1e-4, atol=1e-3)


def test_graph_carries_named_cam_head(exported_chexnet: ExportedChexnet) -> None:
    model = onnx.load(exported_chexnet.onnx_path)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    assert meta == {
        "radlight.interface": INTERFACE_VERSION,
        "radlight.cam_weight": CAM_WEIGHT_INITIALIZER,
        "radlight.cam_bias": CAM_BIAS_INITIALIZER,
    }
    contract = read_contract(model)
    assert (contract.input_size, contract.num_labels, contract.num_channels) == (224, 14, 1024)
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert list(gemm.input[1:]) == [CAM_WEIGHT_INITIALIZER, CAM_BIAS_INITIALIZER]
    names = [tensor.name for tensor in model.graph.initializer]
    assert "classifier.weight" not in names  # moved, not copied
    image = model.graph.input[0].type.tensor_type.shape.dim
    assert image[0].dim_param
    assert [d.dim_value for d in image[1:]] == [3, 224, 224]


def test_untrained_chexnet_is_repeatable_and_says_untrained(tmp_path: Path) -> None:
    first = build_untrained_chexnet(tmp_path / "a", seed=0)
    second = build_untrained_chexnet(tmp_path / "b", seed=0)
    assert first.onnx_path.read_bytes() == second.onnx_path.read_bytes()
    card = ModelCard.load(first.card_path)
    assert card == first.card
    assert card.sha256 == sha256_file(first.onnx_path)
    assert card.trained is False
    assert card.not_for_primary_diagnosis is True
    assert "UNTRAINED" in card.intended_use
    assert any("UNTRAINED" in line for line in card.limitations)
    assert card.label_names[0] == "Atelectasis"
    assert len(card.labels) == 14
    assert first.onnx_path.stat().st_size > 25_000_000  # the full DenseNet-121, float32


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_model(
    exported_chexnet: ExportedChexnet, nih_images: list[npt.NDArray[np.uint8]], tmp_path: Path
) -> None:
    path = tmp_path / "dynamo.onnx"
    sha256 = export_classifier_onnx(exported_chexnet.model, path, exporter="dynamo")
    batch, _ = prepare_batch(nih_images[:2], CHEXNET_PREPROCESSING)
    dynamo = Classifier.load(path, sha256=sha256).predict(batch)
    legacy = Classifier.load(exported_chexnet.onnx_path, sha256=exported_chexnet.sha256)
    np.testing.assert_allclose(dynamo.probabilities, legacy.predict(batch).probabilities, atol=1e-4)
    assert np.array_equal(Classifier.load(path, sha256=sha256).cam_bias, legacy.cam_bias)


class _SoftmaxHead(torch.nn.Module):
    """Scores through softmax: class activation maps would not explain them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=32, stride=32)
        self.classifier = torch.nn.Linear(4, 14)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.conv(x))
        logits = self.classifier(features.mean(dim=(2, 3)))
        return torch.softmax(logits, dim=1), features


def test_export_refuses_a_head_without_cam(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="Sigmoid"):
        export_classifier_onnx(_SoftmaxHead(), tmp_path / "softmax.onnx")
    assert not (tmp_path / "softmax.onnx").exists()


def _gemm_model(*, trans_b: int, with_bias: bool) -> onnx.ModelProto:
    """features [N, 3, 2, 2] -> GAP -> Flatten -> Gemm(exporter-named W[, b]) -> Sigmoid [N, 2]."""
    weight = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight if trans_b else weight.T.copy(), "fc.w")]
    gemm_inputs = ["flat", "fc.w"]
    if with_bias:
        initializers.append(
            numpy_helper.from_array(np.array([0.5, -1.0], dtype=np.float32), "fc.b")
        )
        gemm_inputs.append("fc.b")
    nodes = [
        helper.make_node("Relu", ["image"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", gemm_inputs, ["logits"], transB=trans_b),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["n", 3, 2, 2])],
        [
            helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["n", 3, 2, 2]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("trans_b", "with_bias"), [(1, True), (0, True), (1, False)])
def test_bind_cam_head_keeps_outputs(trans_b: int, with_bias: bool) -> None:
    model = _gemm_model(trans_b=trans_b, with_bias=with_bias)
    image = np.random.default_rng(1).standard_normal((2, 3, 2, 2)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"image": image})
    bind_cam_head(model)
    contract = read_contract(model)
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"image": image})
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    assert np.array_equal(
        contract.cam_weight, np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    )
    expected_bias = (
        np.array([0.5, -1.0], dtype=np.float32) if with_bias else np.zeros(2, np.float32)
    )
    assert np.array_equal(contract.cam_bias, expected_bias)
    assert {t.name for t in model.graph.initializer} == {
        CAM_WEIGHT_INITIALIZER,
        CAM_BIAS_INITIALIZER,
    }
