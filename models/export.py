"""Write classifier ONNX files (interface ``classifier-cam/1``) with their model cards.

How CAM weights are carried: after the PyTorch export, the head ``Sigmoid(Gemm(pool(features)))``
is located by structure (not by exporter-specific tensor names), its weight and bias are moved into
initializers named ``radlight.cam_weight`` ``[L, C]`` and ``radlight.cam_bias`` ``[L]`` (a missing
bias becomes zeros, a ``transB=0`` weight is transposed), and ``metadata_props`` record those names
plus ``radlight.interface``. The Gemm reads those very initializers, so the runtime reads with
``onnx`` exactly the weights that produced the scores. See models.contract for the full interface.

Every export is checked before it is written: onnx.checker, the interface contract, and
onnxruntime's outputs against torch's on a batch size other than the traced one (dynamic batch).
The legacy TorchScript exporter is the default: with torch 2.13 it takes about a second for
DenseNet-121 and keeps the graph as traced; the dynamo exporter also works (about 10 s) and is
kept selectable for when the legacy one is removed. Both give byte-identical files run to run.

torch is imported only inside the functions that need it; :func:`build_tiny_classifier` needs
only ``onnx`` and numpy, so tests and demos run without torch.
"""

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import radlight
from models.card import (
    CARD_FILE_NAME,
    CHEST_XRAY_INPUT,
    CHEXNET_PREPROCESSING,
    ONNX_FILE_NAME,
    STANDARD_OUTPUT_NAMES,
    TASK_CHEST_XRAY_CLASSIFICATION,
    ModelCard,
    Provenance,
    labels_with_codes,
)
from models.checksum import sha256_bytes
from models.contract import (
    CAM_BIAS_INITIALIZER,
    CAM_WEIGHT_INITIALIZER,
    FEATURES_NAME,
    INPUT_NAME,
    INTERFACE_VERSION,
    META_CAM_BIAS,
    META_CAM_WEIGHT,
    META_INTERFACE,
    PROBABILITIES_NAME,
    gemm_attributes,
    read_contract,
)
from models.files import write_durably
from models.labels import CHEST_XRAY14_LABELS
from radlight.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DYNAMO_OPSET = 18
Exporter = Literal["legacy", "dynamo"]
_TRACE_BATCH = 2
_CHECK_BATCH = 3
_ATOL = 1e-4
_RTOL = 1e-4
# Known, harmless notices of torch 2.13's exporters; anything else still surfaces.
_EXPORTER_NOTICES = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


@dataclass(frozen=True)
class BuiltModel:
    """An ONNX file and its card, written side by side, ready for ModelRegistry.install."""

    onnx_path: Path
    card_path: Path
    card: ModelCard


def export_classifier_onnx(
    module: "torch.nn.Module",
    path: Path,
    *,
    input_size: int = 224,
    in_channels: int = 3,
    opset: int | None = None,
    exporter: Exporter = "legacy",
) -> str:
    """Export ``module`` (image -> (probabilities, features)) to ``path``; return its sha256.

    ``opset`` defaults to 17 for the legacy exporter and 18 for dynamo (its lowest; converting
    DenseNet-121 down to 17 fails in onnx's version converter). ``in_channels`` is 3, or 1 for a
    one-channel model (torchxrayvision). The module is put in eval mode.
    Raises ModelError if the exported graph does not follow the classifier-cam/1 interface or
    its outputs differ from torch's by more than 1e-4.
    """
    import torch

    if opset is None:
        opset = DEFAULT_OPSET if exporter == "legacy" else DYNAMO_OPSET
    module.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(_TRACE_BATCH, in_channels, input_size, input_size, generator=generator)
    with _quiet_exporter():
        if exporter == "legacy":
            with tempfile.TemporaryDirectory(prefix="radlight-export-") as tmp:
                traced = Path(tmp) / "traced.onnx"
                torch.onnx.export(
                    module,
                    (example,),
                    traced,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[PROBABILITIES_NAME, FEATURES_NAME],
                    dynamic_axes={
                        INPUT_NAME: {0: "batch"},
                        PROBABILITIES_NAME: {0: "batch"},
                        FEATURES_NAME: {0: "batch"},
                    },
                    opset_version=opset,
                    do_constant_folding=True,
                )
                model = onnx.load(traced)
        elif exporter == "dynamo":
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[PROBABILITIES_NAME, FEATURES_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise ModelError("the dynamo exporter returned no program")
            model = program.model_proto
        else:
            raise ValueError(f"unknown exporter {exporter!r}")

    bind_cam_head(model)
    data = _validated_bytes(model)

    check = torch.randn(_CHECK_BATCH, in_channels, input_size, input_size, generator=generator)
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in module(check)]
    _check_against(data, check.numpy(), expected)
    write_durably(path, data)
    logger.info("exported %s (%d bytes, %s exporter, opset %d)", path, len(data), exporter, opset)
    return sha256_bytes(data)


def bind_cam_head(model: onnx.ModelProto) -> None:
    """Make the head's Gemm read ``radlight.cam_weight``/``radlight.cam_bias``; record them.

    Works on any graph whose ``probabilities`` is Sigmoid(Gemm(x, W[, b])) with W (and b)
    initializers, whatever the exporter named them.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    sigmoid = producers.get(PROBABILITIES_NAME)
    gemm = producers.get(sigmoid.input[0]) if sigmoid is not None else None
    if sigmoid is None or sigmoid.op_type != "Sigmoid" or gemm is None or gemm.op_type != "Gemm":
        raise ModelError(f"{PROBABILITIES_NAME!r} is not produced by Sigmoid(Gemm(...))")
    attributes = gemm_attributes(gemm)
    if attributes["alpha"] != 1.0 or attributes["beta"] != 1.0 or attributes["transA"] != 0:
        raise ModelError(f"unsupported Gemm attributes in the head: {attributes}")

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    weight_name = gemm.input[1]
    if weight_name not in initializers:
        raise ModelError(f"the head's weight {weight_name!r} is not an initializer")
    weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)
    if attributes["transB"] == 0:
        weight = weight.T
    num_labels = weight.shape[0]
    bias_name = gemm.input[2] if len(gemm.input) > 2 else ""
    if bias_name and bias_name not in initializers:
        raise ModelError(f"the head's bias {bias_name!r} is not an initializer")
    bias = (
        numpy_helper.to_array(initializers[bias_name]).astype(np.float32)
        if bias_name
        else np.zeros(num_labels, dtype=np.float32)
    )
    if bias.size not in (1, num_labels):
        raise ModelError(f"the head's bias has shape {bias.shape}, expected [{num_labels}]")
    bias = np.broadcast_to(bias.reshape(-1), (num_labels,)).copy()

    for old in sorted({weight_name, bias_name} - {""}):
        uses = sum(name == old for node in graph.node for name in node.input)
        if uses == 1:  # only the head read it: move rather than copy
            graph.initializer.remove(initializers[old])
            for listed in [vi for vi in graph.input if vi.name == old]:
                graph.input.remove(listed)
    for name, array in ((CAM_WEIGHT_INITIALIZER, weight), (CAM_BIAS_INITIALIZER, bias)):
        for tensor in list(graph.initializer):
            if tensor.name == name:
                graph.initializer.remove(tensor)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    pooled_name = gemm.input[0]
    del gemm.input[:]
    gemm.input.extend([pooled_name, CAM_WEIGHT_INITIALIZER, CAM_BIAS_INITIALIZER])
    for attribute in list(gemm.attribute):
        if attribute.name == "transB":
            gemm.attribute.remove(attribute)
    gemm.attribute.append(helper.make_attribute("transB", 1))
    helper.set_model_props(
        model,
        {
            **{prop.key: prop.value for prop in model.metadata_props},
            META_INTERFACE: INTERFACE_VERSION,
            META_CAM_WEIGHT: CAM_WEIGHT_INITIALIZER,
            META_CAM_BIAS: CAM_BIAS_INITIALIZER,
        },
    )


def _validated_bytes(model: onnx.ModelProto) -> bytes:
    """Serialised ``model`` after onnx.checker and the classifier-cam/1 contract accept it."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported graph fails onnx.checker: {exc}") from exc
    read_contract(model)
    data: bytes = model.SerializeToString()
    return data


def _check_against(
    data: bytes, batch: npt.NDArray[np.float32], expected: list[npt.NDArray[np.float32]]
) -> None:
    """onnxruntime must reproduce torch's (probabilities, features) on ``batch``."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    actual = session.run([PROBABILITIES_NAME, FEATURES_NAME], {INPUT_NAME: batch})
    for name, got, want in zip((PROBABILITIES_NAME, FEATURES_NAME), actual, expected, strict=True):
        if got.shape != want.shape:
            raise ModelError(f"ONNX {name} has shape {got.shape}, torch gives {want.shape}")
        excess = np.abs(got - want) - (_ATOL + _RTOL * np.abs(want))
        if float(excess.max()) > 0:
            worst = float(np.abs(got - want).max())
            raise ModelError(f"ONNX {name} differs from torch by up to {worst:.3g}")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in _EXPORTER_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _write_built(
    out_dir: Path,
    data_sha256: str,
    *,
    name: str,
    version: str,
    trained: bool,
    provenance: Provenance,
    intended_use: str,
    limitations: tuple[str, ...],
) -> BuiltModel:
    card = ModelCard(
        card_format=1,
        name=name,
        version=version,
        task=TASK_CHEST_XRAY_CLASSIFICATION,
        trained=trained,
        labels=labels_with_codes(CHEST_XRAY14_LABELS),
        input=CHEST_XRAY_INPUT,
        preprocessing=CHEXNET_PREPROCESSING,
        outputs=STANDARD_OUTPUT_NAMES,
        onnx_file=ONNX_FILE_NAME,
        sha256=data_sha256,
        provenance=provenance,
        intended_use=intended_use,
        limitations=limitations,
        not_for_primary_diagnosis=True,
    )
    card_path = out_dir / CARD_FILE_NAME
    card.save(card_path)
    return BuiltModel(onnx_path=out_dir / ONNX_FILE_NAME, card_path=card_path, card=card)


def build_untrained_chexnet(
    out_dir: Path, *, seed: int = 0, exporter: Exporter = "legacy"
) -> BuiltModel:
    """DenseNet-121 with seeded random weights, as ONNX plus a card that says UNTRAINED.

    It exists only to exercise the pipeline end to end until real CheXNet weights are imported;
    its scores and heatmaps are meaningless.
    """
    import torch

    from models.densenet import chexnet

    out_dir.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if exporter == "legacy" else DYNAMO_OPSET
    sha256 = export_classifier_onnx(
        chexnet(seed=seed), out_dir / ONNX_FILE_NAME, opset=opset, exporter=exporter
    )
    return _write_built(
        out_dir,
        sha256,
        name="chexnet-densenet121-untrained",
        version=f"0.0.0-seed{seed}",
        trained=False,
        provenance=Provenance(
            source="radlight models.export.build_untrained_chexnet",
            description=(
                f"UNTRAINED. DenseNet-121 (torchvision layout, 14 outputs) initialised as "
                f"torchvision does from torch.Generator seed {seed}; no training data. Exported "
                f"with torch {torch.__version__} ({exporter} exporter, opset {opset})."
            ),
        ),
        intended_use=(
            "UNTRAINED placeholder: exercises the pipeline (DICOM in, inference, heatmaps, DICOM "
            "results out) until real CheXNet weights are imported. Scores are meaningless."
        ),
        limitations=(
            "UNTRAINED: random weights; scores and heatmaps carry no information about the image.",
            "Never present its outputs as findings.",
        ),
    )


def build_tiny_classifier(out_dir: Path, *, seed: int = 0, num_channels: int = 8) -> BuiltModel:
    """A tiny classifier-cam/1 model built with onnx.helper (no torch), for fast tests and demos.

    Graph: AveragePool 32x32 -> Conv3x3 -> ReLU = ``features`` [N, C, 7, 7] -> GlobalAveragePool
    -> Gemm(``radlight.cam_weight``, ``radlight.cam_bias``) -> Sigmoid = ``probabilities`` [N, 14].
    """
    input_size = CHEXNET_PREPROCESSING.input_size
    feature_size = 7
    if input_size % feature_size:
        raise ValueError(f"input size {input_size} is not a multiple of {feature_size}")
    if num_channels < 1:
        raise ValueError("num_channels must be >= 1")
    kernel = input_size // feature_size
    num_labels = len(CHEST_XRAY14_LABELS)
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(values, name)

    initializers = [
        tensor("conv.weight", (num_channels, 3, 3, 3), 0.5),
        tensor("conv.bias", (num_channels,), 0.1),
        tensor(CAM_WEIGHT_INITIALIZER, (num_labels, num_channels), 1.0),
        tensor(CAM_BIAS_INITIALIZER, (num_labels,), 0.1),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[kernel] * 2, strides=[kernel] * 2
        ),
        helper.make_node(
            "Conv", ["pooled", "conv.weight", "conv.bias"], ["conv"], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv"], [FEATURES_NAME]),
        helper.make_node("GlobalAveragePool", [FEATURES_NAME], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node(
            "Gemm", ["flat", CAM_WEIGHT_INITIALIZER, CAM_BIAS_INITIALIZER], ["logits"], transB=1
        ),
        helper.make_node("Sigmoid", ["logits"], [PROBABILITIES_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "radlight_tiny_classifier",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [
            helper.make_tensor_value_info(
                PROBABILITIES_NAME, onnx.TensorProto.FLOAT, ["batch", num_labels]
            ),
            helper.make_tensor_value_info(
                FEATURES_NAME,
                onnx.TensorProto.FLOAT,
                ["batch", num_channels, feature_size, feature_size],
            ),
        ],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)],
        producer_name="radlight",
        producer_version=radlight.__version__,
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            META_INTERFACE: INTERFACE_VERSION,
            META_CAM_WEIGHT: CAM_WEIGHT_INITIALIZER,
            META_CAM_BIAS: CAM_BIAS_INITIALIZER,
        },
    )
    data = _validated_bytes(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_durably(out_dir / ONNX_FILE_NAME, data)
    return _write_built(
        out_dir,
        sha256_bytes(data),
        name="tiny-test-classifier",
        version=f"0.0.0-seed{seed}",
        trained=False,
        provenance=Provenance(
            source="radlight models.export.build_tiny_classifier",
            description=(
                f"TEST MODEL. {num_channels}-channel toy network with random weights from numpy "
                f"seed {seed}; same interface as CheXNet, no training."
            ),
        ),
        intended_use="Tests and demos of the pipeline only. Scores are meaningless.",
        limitations=(
            "TEST MODEL: a few hundred random parameters; outputs carry no information.",
            "Never present its outputs as findings.",
        ),
    )
