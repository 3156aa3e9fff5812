"""The ONNX interface of a RadLight classifier, and how its CAM weights are found in the graph.

Interface ``classifier-cam/1``:

- input ``image``: float32 ``[N, 3, S, S]`` (S = the card's ``input_size``, N dynamic), or
  ``[N, 1, S, S]`` for a one-channel model (preprocessing kind ``xrv-gray``);
- output ``probabilities``: float32 ``[N, L]``, one per label in card order;
- output ``features``: float32 ``[N, C, h, w]``, the map that global average pooling reads;
- the head computing ``probabilities`` is ``Sigmoid(Gemm(GAP(features), W, b, transB=1))``. ``W``
  ``[L, C]`` and ``b`` ``[L]`` are graph initializers, and the model's ``metadata_props`` name them
  under ``radlight.cam_weight`` and ``radlight.cam_bias``. The named tensors are the very ones the
  Gemm uses (not copies), so CAM weights cannot drift from the scores, and reading them needs only
  ``onnx``. ``radlight.interface`` records the interface version.

A class activation map is then ``W @ features`` (see models.cam).

``onnx`` is imported where a graph is parsed, not with this module: importing it costs a second
or more of CPU (``ml_dtypes`` registering its numpy types), which every process importing the
registry paid at start, the API included, though only installing or loading a model reads a
graph. The worker's parent imports it once before its pool forks (``import_onnx``).
"""

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from radlight.errors import ModelError

if TYPE_CHECKING:
    import onnx

INTERFACE_VERSION = "classifier-cam/1"
INPUT_NAME = "image"
PROBABILITIES_NAME = "probabilities"
FEATURES_NAME = "features"
CAM_WEIGHT_INITIALIZER = "radlight.cam_weight"
CAM_BIAS_INITIALIZER = "radlight.cam_bias"
META_INTERFACE = "radlight.interface"
META_CAM_WEIGHT = "radlight.cam_weight"
META_CAM_BIAS = "radlight.cam_bias"

FloatArray = npt.NDArray[np.float32]
_FLOAT = 1  # onnx.TensorProto.FLOAT, fixed by the ONNX standard
# protobuf ships no type stubs; its DecodeError is what onnx raises for bytes that are not a model.
_DECODE_ERROR: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError


def import_onnx() -> ModuleType:
    """The ``onnx`` package, imported on first use (see the module's docstring)."""
    return importlib.import_module("onnx")


def parse_model(data: bytes, *, source: str) -> "onnx.ModelProto":
    """``data`` parsed as an ONNX model; ModelError naming ``source`` if it is not one."""
    try:
        model: onnx.ModelProto = import_onnx().load_from_string(data)
    except _DECODE_ERROR as exc:
        raise ModelError(f"{source}: not an ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"{source}: not an ONNX model (empty graph)")
    return model


@dataclass(frozen=True)
class GraphContract:
    """What a classifier graph declares: tensor names, sizes and its CAM head."""

    input_name: str
    probabilities_name: str
    features_name: str
    input_size: int
    num_labels: int
    num_channels: int
    cam_weight_name: str
    cam_bias_name: str
    cam_weight: FloatArray
    cam_bias: FloatArray
    input_channels: int = 3


def _dims(value_info: "onnx.ValueInfoProto") -> list[int | None]:
    """Static dims of a tensor (None where symbolic or unknown)."""
    shape = value_info.type.tensor_type.shape
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim]


def _initializer(graph: "onnx.GraphProto", name: str) -> FloatArray:
    for tensor in graph.initializer:
        if tensor.name == name:
            if tensor.data_type != _FLOAT:
                raise ModelError(f"initializer {name!r} is not float32")
            numpy_helper = importlib.import_module("onnx.numpy_helper")
            array: FloatArray = numpy_helper.to_array(tensor).astype(np.float32, copy=True)
            return array
    raise ModelError(f"initializer {name!r} named in the model metadata is not in the graph")


def _graph_io(
    model: "onnx.ModelProto", input_name: str, output_names: tuple[str, ...]
) -> tuple[dict[str, "onnx.ValueInfoProto"], dict[str, "onnx.ValueInfoProto"]]:
    """The graph's real inputs (not initializers) and its outputs, checked against the names."""
    graph = model.graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = {vi.name: vi for vi in graph.input if vi.name not in initializer_names}
    outputs = {vi.name: vi for vi in graph.output}
    if list(inputs) != [input_name]:
        raise ModelError(f"graph inputs are {list(inputs)}, expected [{input_name!r}]")
    for name in output_names:
        if name not in outputs:
            raise ModelError(f"graph has no output {name!r} (outputs: {list(outputs)})")
    return inputs, outputs


def read_contract(
    model: "onnx.ModelProto",
    *,
    input_name: str = INPUT_NAME,
    probabilities_name: str = PROBABILITIES_NAME,
    features_name: str = FEATURES_NAME,
) -> GraphContract:
    """Check ``model`` against interface classifier-cam/1 and read its CAM head (or ModelError)."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if meta.get(META_INTERFACE) != INTERFACE_VERSION:
        raise ModelError(
            f"model metadata {META_INTERFACE}={meta.get(META_INTERFACE)!r}, "
            f"expected {INTERFACE_VERSION!r}"
        )
    try:
        weight_name, bias_name = meta[META_CAM_WEIGHT], meta[META_CAM_BIAS]
    except KeyError as exc:
        raise ModelError(f"model metadata lacks {exc.args[0]!r}") from exc
    graph = model.graph
    inputs, outputs = _graph_io(model, input_name, (probabilities_name, features_name))
    for name, vi in (*inputs.items(), *outputs.items()):
        if vi.type.tensor_type.elem_type != _FLOAT:
            raise ModelError(f"graph tensor {name!r} is not float32")

    image_dims = _dims(inputs[input_name])
    if len(image_dims) != 4 or image_dims[1] not in (1, 3) or image_dims[2] is None:
        raise ModelError(f"input {input_name!r} must be [N, 3 or 1, S, S], is {image_dims}")
    if image_dims[2] != image_dims[3]:
        raise ModelError(f"input {input_name!r} must be square, is {image_dims}")
    prob_dims = _dims(outputs[probabilities_name])
    feature_dims = _dims(outputs[features_name])
    if len(prob_dims) != 2 or len(feature_dims) != 4:
        raise ModelError(f"outputs must be [N, L], [N, C, h, w]; are {prob_dims}, {feature_dims}")

    weight = _initializer(graph, weight_name)
    bias = _initializer(graph, bias_name)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ModelError(f"CAM weight/bias shapes {weight.shape}/{bias.shape} are not [L, C]/[L]")
    num_labels, num_channels = weight.shape
    if prob_dims[1] not in (None, num_labels) or feature_dims[1] not in (None, num_channels):
        raise ModelError(
            f"CAM weight [L={num_labels}, C={num_channels}] does not match outputs "
            f"{prob_dims} and {feature_dims}"
        )
    _check_head(graph, weight_name, bias_name, probabilities_name, features_name)
    return GraphContract(
        input_name=input_name,
        probabilities_name=probabilities_name,
        features_name=features_name,
        input_size=image_dims[2],
        num_labels=num_labels,
        num_channels=num_channels,
        cam_weight_name=weight_name,
        cam_bias_name=bias_name,
        cam_weight=weight,
        cam_bias=bias,
        input_channels=int(image_dims[1]),
    )


_RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze"})
_POOLS = frozenset({"GlobalAveragePool", "ReduceMean"})


def _check_head(
    graph: "onnx.GraphProto",
    weight_name: str,
    bias_name: str,
    probabilities_name: str,
    features_name: str,
) -> None:
    """``probabilities`` must be Sigmoid(Gemm(pool(features), W, b)) with the named W and b.

    Only then is ``W @ features`` a class activation map whose spatial mean is the logit (minus b).
    """
    producers = {output: node for node in graph.node for output in node.output}
    sigmoid = producers.get(probabilities_name)
    gemm = producers.get(sigmoid.input[0]) if sigmoid is not None else None
    if (
        sigmoid is None
        or sigmoid.op_type != "Sigmoid"
        or gemm is None
        or gemm.op_type != "Gemm"
        or list(gemm.input[1:]) != [weight_name, bias_name]
        or gemm_attributes(gemm) != {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
    ):
        raise ModelError(
            f"{probabilities_name!r} is not Sigmoid(Gemm(x, {weight_name}, {bias_name}, transB=1))"
        )
    tensor, pools = gemm.input[0], 0
    for _ in range(4):
        node = producers.get(tensor)
        if node is None or node.op_type not in _RESHAPES | _POOLS:
            break
        pools += node.op_type in _POOLS
        tensor = node.input[0]
        if tensor == features_name:
            break
    if tensor != features_name or pools != 1:
        raise ModelError(f"the Gemm before {probabilities_name!r} does not read pooled features")


def gemm_attributes(node: "onnx.NodeProto") -> dict[str, float | int]:
    """A Gemm node's attributes with the ONNX defaults filled in."""
    values: dict[str, float | int] = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    for attribute in node.attribute:
        if attribute.name in ("alpha", "beta"):
            values[attribute.name] = float(attribute.f)
        elif attribute.name in ("transA", "transB"):
            values[attribute.name] = int(attribute.i)
    return values


HEATMAP_INTERFACE_VERSION = "probabilities-heatmap/1"


@dataclass(frozen=True)
class HeatmapGraphContract:
    """What a ``probabilities-heatmap/1`` graph declares (see models.runtime)."""

    input_name: str
    probabilities_name: str
    heatmap_name: str
    layout: str  # "nchw" or "nhwc"
    input_size: int
    num_columns: int | None  # None where the exporter left it symbolic


def read_heatmap_contract(
    model: "onnx.ModelProto", *, input_name: str, probabilities_name: str, heatmap_name: str
) -> HeatmapGraphContract:
    """Check ``model`` has one square 3-channel image input (NCHW or NHWC) and the named outputs.

    The heatmap is computed inside the graph (for the pneumonia demo, an exact Grad-CAM), so there
    are no weights to read; its shape is ``[N, h, w]`` or ``[N, L, h, w]``.
    """
    inputs, outputs = _graph_io(model, input_name, (probabilities_name, heatmap_name))
    for name, vi in ((input_name, inputs[input_name]), *outputs.items()):
        if vi.type.tensor_type.elem_type != _FLOAT:
            raise ModelError(f"graph tensor {name!r} is not float32")
    dims = _dims(inputs[input_name])
    if len(dims) == 4 and dims[1] == 3 and dims[2] is not None and dims[2] == dims[3]:
        layout, size = "nchw", dims[2]
    elif len(dims) == 4 and dims[3] == 3 and dims[1] is not None and dims[1] == dims[2]:
        layout, size = "nhwc", dims[1]
    else:
        raise ModelError(f"input {input_name!r} must be [N, 3, S, S] or [N, S, S, 3], is {dims}")
    prob_dims = _dims(outputs[probabilities_name])
    heat_dims = _dims(outputs[heatmap_name])
    if len(prob_dims) != 2 or len(heat_dims) not in (3, 4):
        raise ModelError(
            f"outputs must be [N, K] and [N, h, w] or [N, L, h, w]; are {prob_dims}, {heat_dims}"
        )
    return HeatmapGraphContract(
        input_name=input_name,
        probabilities_name=probabilities_name,
        heatmap_name=heatmap_name,
        layout=layout,
        input_size=size,
        num_columns=prob_dims[1],
    )
