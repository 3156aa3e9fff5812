"""Half-precision (fp16) copies of a classifier-cam/1 model, run only where they agree with it.

On a GPU an fp16 model moves half the bytes and runs on the tensor cores. RadLight converts the
backbone only: every node up to the features tensor goes through onnxruntime's own converter
(``onnxruntime.transformers.float16``, no extra dependency), with its input and its features
output kept float32. The head (pooling, the classifier's Gemm, the sigmoid) stays float32 and reads
those features, exactly as the card's file does. So the CAM contract of :mod:`models.contract`
holds unchanged, the CAM weights stay float32, and a heatmap is the same function of the features
in both precisions. (Converting the whole graph made the converter put float16 round trips
between the head's nodes, and the CAM weights float16.)

A copy is made and checked once per installed version (``radlight models fp16``): the card's file
and the copy run on the check images given, and the copy is kept only if every probability is
within ``tolerance`` of the card's file, no finding's decision at its threshold changes, and every
heatmap is within ``heatmap_tolerance`` of the card's heatmap's range. The copy
(``model.fp16.onnx``) and its figures (``fp16.json``) sit beside the card's file. A worker with
``RADLIGHT_INFERENCE_PRECISION=fp16`` runs the copy only if its record names the card's sha256 and
the copy still has its own; otherwise it runs the card's file and logs why (``select_precision``).
Results made by the copy name it: version ``<version>+fp16`` and the copy's sha256.
"""

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.card import OutputNames
from models.checksum import cached_sha256_file, sha256_bytes
from models.files import write_durably
from models.registry import ModelEntry, PrecisionVariant
from models.runtime import Classifier, available_providers
from radlight.errors import ModelError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]
FP16_FILE = "model.fp16.onnx"
FP16_RECORD = "fp16.json"
DEFAULT_TOLERANCE = 0.01  # of a probability
DEFAULT_HEATMAP_TOLERANCE = 0.02  # of the card's heatmap's range, per image and finding


class Fp16Check(BaseModel):
    """How an fp16 copy compared with the card's file on the check images; kept as fp16.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_sha256: str = Field(description="sha256 of the card's file the copy was made from")
    sha256: str = Field(description="sha256 of the fp16 copy")
    images: int = Field(ge=1)
    max_probability_difference: float
    max_heatmap_difference: float = Field(description="as a fraction of the heatmap's range")
    decisions_changed: int = Field(ge=0, description="findings whose present/absent flipped")
    tolerance: float
    heatmap_tolerance: float
    provider: str
    onnxruntime_version: str
    checked_at: datetime

    @property
    def passed(self) -> bool:
        return (
            self.max_probability_difference <= self.tolerance
            and self.max_heatmap_difference <= self.heatmap_tolerance
            and self.decisions_changed == 0
        )

    def summary(self) -> str:
        return (
            f"{self.images} images: probabilities within {self.max_probability_difference:.2g} "
            f"(tolerance {self.tolerance:g}), heatmaps within {self.max_heatmap_difference:.2g} "
            f"of their range (tolerance {self.heatmap_tolerance:g}), "
            f"{self.decisions_changed} decisions changed, on {self.provider}"
        )


def convert_backbone_to_fp16(model: "onnx.ModelProto", names: OutputNames) -> "onnx.ModelProto":
    """``model`` with every node up to ``names.features`` in float16 (input and features kept
    float32) and its head as it was; checked by onnx."""
    import onnx
    from onnx import helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    body = onnx.utils.Extractor(model).extract_model([names.input], [names.features])
    body16 = convert_float_to_float16(body, keep_io_types=True)
    made_by_body = {output for node in body.graph.node for output in node.output}
    head = [node for node in model.graph.node if not set(node.output) <= made_by_body]
    read_by_head = {name for node in head for name in node.input}
    head_weights = [init for init in model.graph.initializer if init.name in read_by_head]
    known = {value.name for value in body16.graph.input}
    known |= {init.name for init in [*body16.graph.initializer, *head_weights]}
    graph = helper.make_graph(
        _in_order([*body16.graph.node, *head], known),
        model.graph.name,
        list(body16.graph.input),
        list(model.graph.output),
        [*body16.graph.initializer, *head_weights],
    )
    converted = helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    for prop in model.metadata_props:
        converted.metadata_props.add(key=prop.key, value=prop.value)
    onnx.checker.check_model(converted)
    return converted


def _in_order(nodes: Sequence["onnx.NodeProto"], known: set[str]) -> list["onnx.NodeProto"]:
    """``nodes`` sorted so that each comes after the nodes making its inputs (the converter adds
    its input casts at the end of the list, which onnx's checker refuses)."""
    available, ordered, pending = set(known), [], list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(not name or name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ModelError("the converted graph has inputs that no node makes")
        pending = waiting
    return ordered


def compare(
    reference: Classifier,
    candidate: Classifier,
    batch: npt.NDArray[np.float32],
    thresholds: Sequence[float],
) -> tuple[float, float, int]:
    """Largest probability difference, largest heatmap difference (as a fraction of the
    reference heatmap's range, per image and finding) and the number of findings whose decision
    at its threshold differs, over ``batch`` run one image at a time."""
    max_probability = max_heatmap = 0.0
    changed = 0
    limits = np.asarray(thresholds, dtype=np.float32)
    for image in batch:
        ours, theirs = reference.infer(image[np.newaxis]), candidate.infer(image[np.newaxis])
        max_probability = max(
            max_probability, float(np.abs(ours.probabilities - theirs.probabilities).max())
        )
        spread = np.ptp(ours.heatmaps[0], axis=(1, 2))
        difference = np.abs(ours.heatmaps[0] - theirs.heatmaps[0]).max(axis=(1, 2))
        max_heatmap = max(max_heatmap, float((difference / np.maximum(spread, 1e-6)).max()))
        changed += int(
            ((ours.probabilities[0] >= limits) != (theirs.probabilities[0] >= limits)).sum()
        )
    return max_probability, max_heatmap, changed


def make_fp16_copy(
    entry: ModelEntry,
    batch: npt.NDArray[np.float32],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    heatmap_tolerance: float = DEFAULT_HEATMAP_TOLERANCE,
    default_threshold: float = 0.5,
) -> Fp16Check:
    """Make ``entry``'s fp16 copy, check it on ``batch`` (prepared images, ``[N, ...]``) and keep
    it beside the card's file if it passes; its figures either way, ModelError if it fails."""
    import onnx

    names = entry.card.outputs
    if not isinstance(names, OutputNames):
        raise ModelError(
            f"model {entry.name} {entry.version} is {entry.card.interface}; fp16 copies are made "
            "for classifier-cam/1 models"
        )
    if entry.variant is not None:
        raise ModelError("make the fp16 copy from the card's file, not from a variant")
    if len(batch) == 0:
        raise ModelError("no check images: the fp16 copy cannot be checked")
    try:
        source = onnx.load_from_string(entry.onnx_path.read_bytes())
        data = convert_backbone_to_fp16(source, names).SerializeToString()
    except Exception as exc:  # onnx's and the converter's own errors, whatever their type
        raise ModelError(f"cannot convert {entry.name} {entry.version} to fp16: {exc}") from exc
    sha256 = sha256_bytes(data)
    try:
        fd, staged_name = tempfile.mkstemp(dir=entry.directory, prefix=".fp16-", suffix=".onnx")
    except OSError as exc:
        raise ModelError(f"cannot write the fp16 copy in {entry.directory}: {exc}") from exc
    staged = Path(staged_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        reference = Classifier.build(entry.onnx_path, sha256=entry.sha256, names=names)
        candidate = Classifier.build(staged, sha256=sha256, names=names)
        thresholds = [
            label.threshold if label.threshold is not None else default_threshold
            for label in entry.card.labels
        ]
        probability, heatmap, changed = compare(reference, candidate, batch, thresholds)
        check = Fp16Check(
            source_sha256=entry.sha256,
            sha256=sha256,
            images=len(batch),
            max_probability_difference=probability,
            max_heatmap_difference=heatmap,
            decisions_changed=changed,
            tolerance=tolerance,
            heatmap_tolerance=heatmap_tolerance,
            provider=available_providers()[0],
            onnxruntime_version=ort.__version__,
            checked_at=datetime.now(UTC),
        )
        if not check.passed:
            raise ModelError(
                f"the fp16 copy of {entry.name} {entry.version} differs too much: {check.summary()}"
            )
        staged.replace(entry.directory / FP16_FILE)
        write_durably(entry.directory / FP16_RECORD, check.model_dump_json(indent=2).encode())
    except OSError as exc:
        raise ModelError(f"cannot write the fp16 copy in {entry.directory}: {exc}") from exc
    finally:
        staged.unlink(missing_ok=True)
    logger.info("fp16 copy of %s %s kept: %s", entry.name, entry.version, check.summary())
    return check


def read_fp16_check(entry: ModelEntry) -> Fp16Check | None:
    """The figures of ``entry``'s fp16 copy, or None when it has none (ModelError if unreadable)."""
    path = entry.directory / FP16_RECORD
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    try:
        return Fp16Check.model_validate_json(text)
    except ValidationError as exc:
        raise ModelError(f"{path} is not an fp16 record: {exc.error_count()} errors") from exc


def with_precision(entry: ModelEntry, precision: Precision) -> ModelEntry:
    """``entry`` set to run in ``precision``: itself for fp32; for fp16 its checked copy, or a
    ModelError saying why it cannot be used."""
    if precision == "fp32":
        return replace(entry, variant=None)
    check = read_fp16_check(entry)
    if check is None:
        raise ModelError(
            f"{entry.name} {entry.version} has no fp16 copy (radlight models fp16 makes one)"
        )
    if check.source_sha256 != entry.card.sha256:
        raise ModelError(
            f"the fp16 copy of {entry.name} {entry.version} was made from another file"
        )
    if not check.passed:
        raise ModelError(f"the fp16 copy of {entry.name} {entry.version} failed its check")
    path = entry.directory / FP16_FILE
    try:
        actual = cached_sha256_file(path)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if actual != check.sha256:
        raise ModelError(f"{path} has sha256 {actual}, its record promises {check.sha256}")
    return replace(entry, variant=PrecisionVariant("fp16", FP16_FILE, check.sha256))


_reported: set[tuple[str, str]] = set()


def select_precision(entry: ModelEntry, precision: Precision) -> ModelEntry:
    """What a worker runs for ``entry``: its ``precision`` where it can be used, else the card's
    file, with the reason logged once per installed version and reason."""
    try:
        return with_precision(entry, precision)
    except ModelError as exc:
        key = (str(entry.directory), str(exc))
        if key not in _reported:
            _reported.add(key)
            logger.warning("running %s %s in fp32: %s", entry.name, entry.version, exc)
        return replace(entry, variant=None)


def prepared_batch(images: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Prepared images stacked into one check batch."""
    stacked = list(images)
    if not stacked:
        return np.empty((0,), dtype=np.float32)
    return np.stack(stacked).astype(np.float32, copy=False)
