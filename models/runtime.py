"""onnxruntime sessions for RadLight's model interfaces, one per model file per process.

Two interfaces, chosen by the card's ``interface``, give the pipeline one common result,
:class:`Inference` (probabilities ``[N, L]`` in card label order and heatmaps ``[N, L, h, w]``):

- ``classifier-cam/1`` (:class:`Classifier`): probabilities and the feature map; the CAM weights
  carried in the graph turn features into one map per label by a matmul (models.contract);
- ``probabilities-heatmap/1`` (:class:`HeatmapModel`): probabilities ``[N, K]`` of which the card
  reads ``label_columns``, and a heatmap computed inside the graph (the pneumonia demo's exact
  Grad-CAM, ``[N, h, w]`` for its one label).

A session is built from the very bytes whose sha256 was checked, so what runs is what was
verified. CUDA is used when this onnxruntime build offers it, else the CPU. Sessions are cached
per (path, sha256, tensor names) in a small LRU: a Celery worker process loads a model once, not
per job. ``InferenceSession.run`` is thread-safe, so a cached Classifier may be shared by threads.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from models.cam import class_activation_maps
from models.card import STANDARD_OUTPUT_NAMES, HeatmapOutputNames, OutputNames
from models.checksum import sha256_bytes
from models.contract import (
    GraphContract,
    HeatmapGraphContract,
    parse_model,
    read_contract,
    read_heatmap_contract,
)
from models.registry import ModelEntry
from radlight.errors import ModelError, ModelIntegrityError

FloatArray = npt.NDArray[np.float32]
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# The scores must follow from the carried CAM weights; a larger gap means the CAMs would lie.
HEAD_TOLERANCE = 1e-3
# Sessions a process keeps (least recently used dropped first).
CACHE_SIZE = 4
_ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)

_cache: "OrderedDict[tuple[str, str, OutputNames | HeatmapOutputNames], Model]" = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class Inference:
    """What every interface gives the pipeline: scores ``[N, L]`` in card label order and one
    heatmap per label ``[N, L, h, w]`` on the model input's grid (unnormalised)."""

    probabilities: FloatArray
    heatmaps: FloatArray


@dataclass(frozen=True)
class ClassifierOutput:
    """Scores ``[N, L]`` in card label order and the feature map ``[N, C, h, w]``."""

    probabilities: FloatArray
    features: FloatArray


def available_providers() -> list[str]:
    """CUDA then CPU, keeping only what this onnxruntime build has."""
    available = set(ort.get_available_providers())
    providers = [name for name in PREFERRED_PROVIDERS if name in available]
    if not providers:
        raise ModelError(f"onnxruntime offers none of {PREFERRED_PROVIDERS}")
    return providers


class Classifier:
    """A loaded classifier-cam/1 model: ``predict`` plus the CAM weights read from its graph."""

    def __init__(self, session: ort.InferenceSession, contract: GraphContract) -> None:
        self.session = session
        self.contract = contract

    @classmethod
    def load(
        cls, onnx_path: Path, *, sha256: str, names: OutputNames = STANDARD_OUTPUT_NAMES
    ) -> "Classifier":
        """The process-wide Classifier for this file; built (and sha256-checked) on first use."""
        return _cached(onnx_path, sha256, names, cls)

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> "Classifier":
        return load_classifier(entry)

    @classmethod
    def build(cls, onnx_path: Path, *, sha256: str, names: OutputNames) -> "Classifier":
        """A Classifier of its own for this file, not cached (``load`` caches): for comparing
        a file that is not installed yet with the one that is (``models.precision``)."""
        data = _read_checked(onnx_path, sha256)
        contract = read_contract(
            parse_model(data, source=str(onnx_path)),
            input_name=names.input,
            probabilities_name=names.probabilities,
            features_name=names.features,
        )
        if (contract.cam_weight_name, contract.cam_bias_name) != (names.cam_weight, names.cam_bias):
            raise ModelError(
                f"{onnx_path}: CAM initializers are {contract.cam_weight_name}/"
                f"{contract.cam_bias_name}, expected {names.cam_weight}/{names.cam_bias}"
            )
        return cls(_session(data, onnx_path), contract)

    @property
    def input_size(self) -> int:
        return self.contract.input_size

    @property
    def num_labels(self) -> int:
        return self.contract.num_labels

    @property
    def cam_weights(self) -> FloatArray:
        """``[L, C]``: row ``l`` times the feature map is label ``l``'s activation map."""
        return self.contract.cam_weight

    @property
    def cam_bias(self) -> FloatArray:
        return self.contract.cam_bias

    def predict(self, batch: npt.NDArray[np.generic]) -> ClassifierOutput:
        """Scores and feature maps for a prepared float32 batch ``[N, 3, S, S]``."""
        size = self.input_size
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise ValueError(f"batch must be float32, got {batch.dtype}")
        channels = self.contract.input_channels  # 3, or 1 for xrv-gray models
        if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1:] != (channels, size, size):
            raise ValueError(f"batch must be [N>=1, {channels}, {size}, {size}], got {batch.shape}")
        if not np.isfinite(batch).all():
            raise ValueError("batch holds NaN or infinity")
        names = [self.contract.probabilities_name, self.contract.features_name]
        try:
            probabilities, features = self.session.run(
                names, {self.contract.input_name: np.ascontiguousarray(batch)}
            )
        except _ORT_ERRORS as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        output = ClassifierOutput(
            probabilities=np.asarray(probabilities, dtype=np.float32),
            features=np.asarray(features, dtype=np.float32),
        )
        self._check_head(output)
        return output

    def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
        """Scores and one class activation map per label for a prepared batch."""
        output = self.predict(batch)
        return Inference(
            probabilities=output.probabilities,
            heatmaps=class_activation_maps(output.features, self.cam_weights),
        )

    def _check_head(self, output: ClassifierOutput) -> None:
        """sigmoid(W @ mean(features) + b) must give the scores, or the CAMs would not explain them."""
        pooled = output.features.mean(axis=(2, 3), dtype=np.float64)
        logits = pooled @ self.cam_weights.T.astype(np.float64) + self.cam_bias
        expected = 0.5 * (1.0 + np.tanh(0.5 * logits))
        gap = float(np.abs(expected - output.probabilities).max())
        if gap > HEAD_TOLERANCE:
            raise ModelError(f"scores differ from the CAM head's by {gap:.3g}; model is unusable")


class HeatmapModel:
    """A loaded probabilities-heatmap/1 model: probabilities and an in-graph heatmap."""

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: HeatmapGraphContract,
        names: HeatmapOutputNames,
    ) -> None:
        self.session = session
        self.contract = contract
        self.label_columns = names.label_columns

    @classmethod
    def load(cls, onnx_path: Path, *, sha256: str, names: HeatmapOutputNames) -> "HeatmapModel":
        """The process-wide HeatmapModel for this file; built (and sha256-checked) on first use."""
        return _cached(onnx_path, sha256, names, cls)

    @classmethod
    def build(cls, onnx_path: Path, *, sha256: str, names: HeatmapOutputNames) -> "HeatmapModel":
        """A HeatmapModel of its own for this file, not cached (``load`` caches)."""
        data = _read_checked(onnx_path, sha256)
        contract = read_heatmap_contract(
            parse_model(data, source=str(onnx_path)),
            input_name=names.input,
            probabilities_name=names.probabilities,
            heatmap_name=names.heatmap,
        )
        return cls(_session(data, onnx_path), contract, names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's input shape: ``(3, S, S)`` or ``(S, S, 3)``."""
        size = self.contract.input_size
        return (3, size, size) if self.contract.layout == "nchw" else (size, size, 3)

    def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
        """Scores ``[N, L]`` (the card's columns) and heatmaps ``[N, L, h, w]``."""
        _check_batch(batch, self.input_shape)
        names = [self.contract.probabilities_name, self.contract.heatmap_name]
        try:
            probabilities, heatmap = self.session.run(
                names, {self.contract.input_name: np.ascontiguousarray(batch)}
            )
        except _ORT_ERRORS as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        scores = np.asarray(probabilities, dtype=np.float32)
        maps = np.asarray(heatmap, dtype=np.float32)
        columns = list(self.label_columns)
        if scores.ndim != 2 or scores.shape[0] != batch.shape[0] or max(columns) >= scores.shape[1]:
            raise ModelError(
                f"probabilities have shape {scores.shape}; card reads columns {columns}"
            )
        if maps.ndim == 3 and len(columns) == 1:
            maps = maps[:, np.newaxis]
        if maps.ndim != 4 or maps.shape[:2] != (batch.shape[0], len(columns)):
            raise ModelError(f"heatmap has shape {maps.shape}, expected [N, {len(columns)}, h, w]")
        if not (np.isfinite(scores).all() and np.isfinite(maps).all()):
            raise ModelError("the model produced NaN or infinity")
        return Inference(probabilities=np.ascontiguousarray(scores[:, columns]), heatmaps=maps)


Model = Classifier | HeatmapModel


def load_model(entry: ModelEntry) -> Model:
    """The cached model of a registry entry, for the interface its card names."""
    names = entry.card.outputs
    if isinstance(names, HeatmapOutputNames):
        return HeatmapModel.load(entry.onnx_path, sha256=entry.sha256, names=names)
    return Classifier.load(entry.onnx_path, sha256=entry.sha256, names=names)


def load_classifier(entry: ModelEntry) -> Classifier:
    """The cached Classifier of a classifier-cam/1 registry entry."""
    names = entry.card.outputs
    if not isinstance(names, OutputNames):
        raise ModelError(f"model {entry.name} {entry.version} is not a classifier-cam/1 model")
    return Classifier.load(entry.onnx_path, sha256=entry.sha256, names=names)


_M = TypeVar("_M", Classifier, HeatmapModel)


def _cached(
    onnx_path: Path, sha256: str, names: OutputNames | HeatmapOutputNames, cls: type[_M]
) -> _M:
    key = (str(Path(onnx_path).resolve()), sha256, names)
    with _lock:
        cached = _cache.get(key)
        if isinstance(cached, cls):
            _cache.move_to_end(key)
            return cached
        model = cls.build(Path(onnx_path), sha256=sha256, names=names)  # type: ignore[arg-type]
        _cache[key] = model
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def _read_checked(onnx_path: Path, sha256: str) -> bytes:
    try:
        data = onnx_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {onnx_path}: {exc}") from exc
    actual = sha256_bytes(data)
    if actual != sha256:
        raise ModelIntegrityError(f"{onnx_path} has sha256 {actual}, expected {sha256}")
    return data


_intra_op_threads = 0  # 0: onnxruntime's choice (one per core)
_allow_spinning = False


def set_intra_op_threads(threads: int, *, spinning: bool = False) -> None:
    """Threads each new session may use for one operator, and whether they go on spinning after
    a run. A worker process running beside others on the same cores sets cores / processes, so
    they do not oversubscribe the CPU; 0 lets onnxruntime choose. Within a run the threads always
    busy-wait for the next operator (parking them between DenseNet's ~400 operators cost 4 ms per
    inference). After the run onnxruntime's default keeps them spinning, on cores shared with the
    worker's own Python, the node and the database: ``spinning=False`` stops them as the run
    returns (``session.force_spinning_stop``), which saves the 27 ms of CPU per DenseNet-121
    inference that spinning on cost (docs/PERFORMANCE.md). Sessions built before the call keep
    their setting."""
    global _intra_op_threads, _allow_spinning
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _intra_op_threads = threads
    _allow_spinning = spinning


def session_options() -> ort.SessionOptions:
    """Every graph optimisation, sequential execution (DenseNet is a chain), and the process's
    intra-op threads and spinning after a run; the CUDA provider, where present, is chosen in
    ``available_providers``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if _intra_op_threads:
        options.intra_op_num_threads = _intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "0" if _allow_spinning else "1")
    return options


def _session(data: bytes, onnx_path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            data, sess_options=session_options(), providers=available_providers()
        )
    except _ORT_ERRORS as exc:
        raise ModelError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc


def _check_batch(batch: npt.NDArray[np.generic], shape: tuple[int, int, int]) -> None:
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(batch).__name__}")
    if batch.dtype != np.float32:
        raise ValueError(f"batch must be float32, got {batch.dtype}")
    if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1:] != shape:
        raise ValueError(f"batch must be [N>=1, {', '.join(map(str, shape))}], got {batch.shape}")
    if not np.isfinite(batch).all():
        raise ValueError("batch holds NaN or infinity")


def get_session(onnx_path: Path, *, sha256: str) -> ort.InferenceSession:
    """The cached onnxruntime session of a standard-named classifier file."""
    return Classifier.load(onnx_path, sha256=sha256).session


def loaded_model_sha256s() -> frozenset[str]:
    """The sha256 of every model file this process holds a session for."""
    with _lock:
        return frozenset(sha256 for _path, sha256, _names in _cache)


def clear_session_cache() -> None:
    with _lock:
        _cache.clear()
