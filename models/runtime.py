"""onnxruntime sessions for classifier-cam/1 models, one per model file per process.

A session is built from the very bytes whose sha256 was checked, so what runs is what was
verified. CUDA is used when this onnxruntime build offers it, else the CPU. Sessions are cached
per (path, sha256, tensor names) in a small LRU: a Celery worker process loads a model once, not
per job. ``InferenceSession.run`` is thread-safe, so a cached Classifier may be shared by threads.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from models.card import STANDARD_OUTPUT_NAMES, OutputNames
from models.checksum import sha256_bytes
from models.contract import GraphContract, parse_model, read_contract
from models.registry import ModelEntry
from radlight.errors import ModelError, ModelIntegrityError

FloatArray = npt.NDArray[np.float32]
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# The scores must follow from the carried CAM weights; a larger gap means the CAMs would lie.
HEAD_TOLERANCE = 1e-3
_CACHE_SIZE = 4
_ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)

_cache: "OrderedDict[tuple[str, str, OutputNames], Classifier]" = OrderedDict()
_lock = threading.Lock()


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
        key = (str(Path(onnx_path).resolve()), sha256, names)
        with _lock:
            cached = _cache.get(key)
            if cached is not None:
                _cache.move_to_end(key)
                return cached
            classifier = cls._build(Path(onnx_path), sha256=sha256, names=names)
            _cache[key] = classifier
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            return classifier

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> "Classifier":
        return cls.load(entry.onnx_path, sha256=entry.sha256, names=entry.card.outputs)

    @classmethod
    def _build(cls, onnx_path: Path, *, sha256: str, names: OutputNames) -> "Classifier":
        try:
            data = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {onnx_path}: {exc}") from exc
        actual = sha256_bytes(data)
        if actual != sha256:
            raise ModelIntegrityError(f"{onnx_path} has sha256 {actual}, expected {sha256}")
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
        try:
            session = ort.InferenceSession(data, providers=available_providers())
        except _ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        return cls(session, contract)

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
        if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1:] != (3, size, size):
            raise ValueError(f"batch must be [N>=1, 3, {size}, {size}], got {batch.shape}")
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

    def _check_head(self, output: ClassifierOutput) -> None:
        """sigmoid(W @ mean(features) + b) must give the scores, or the CAMs would not explain them."""
        pooled = output.features.mean(axis=(2, 3), dtype=np.float64)
        logits = pooled @ self.cam_weights.T.astype(np.float64) + self.cam_bias
        expected = 0.5 * (1.0 + np.tanh(0.5 * logits))
        gap = float(np.abs(expected - output.probabilities).max())
        if gap > HEAD_TOLERANCE:
            raise ModelError(f"scores differ from the CAM head's by {gap:.3g}; model is unusable")


def load_classifier(entry: ModelEntry) -> Classifier:
    """The cached Classifier of a registry entry (what a worker calls once per job)."""
    return Classifier.from_entry(entry)


def get_session(onnx_path: Path, *, sha256: str) -> ort.InferenceSession:
    """The cached onnxruntime session of a standard-named classifier file."""
    return Classifier.load(onnx_path, sha256=sha256).session


def clear_session_cache() -> None:
    with _lock:
        _cache.clear()
