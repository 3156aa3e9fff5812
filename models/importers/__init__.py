"""Import public CheXNet-style checkpoints as RadLight models (ONNX + card), safely.

``radlight models import FORMAT PATH`` calls :func:`import_checkpoint` then
``ModelRegistry.install``. The file is unpickled with an allow-list (models.importers.safe_pickle:
no code from the file runs), converted to our DenseNet-121's state dict (models.importers.formats;
unknown or missing keys are an error that lists them), loaded strictly, exported with
models.export (checked against torch) and described by a card whose provenance names the format,
the original file name and its sha256. torch is needed (the ``export`` extra); torchvision is not.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from models.card import (
    CARD_FILE_NAME,
    CHEST_XRAY_INPUT,
    ONNX_FILE_NAME,
    STANDARD_OUTPUT_NAMES,
    TASK_CHEST_XRAY_CLASSIFICATION,
    CodedConcept,
    LabelSpec,
    ModelCard,
    Provenance,
    validate_identifier,
)
from models.checksum import sha256_file
from models.export import BuiltModel
from models.importers.formats import FORMATS, ConvertedCheckpoint, Format, convert
from models.importers.safe_pickle import load_checkpoint
from models.labels import finding_code
from radlight.errors import ModelError

if TYPE_CHECKING:
    from models.densenet import DenseNet121

__all__ = ["DEFAULT_NAMES", "FORMATS", "Format", "import_checkpoint", "load_checkpoint"]

DEFAULT_NAMES: dict[str, str] = {
    "arnoweng-chexnet": "chexnet-arnoweng",
    "jrzech-chexnet": "chexnet-jrzech",
    "xrv-densenet121": "xrv-densenet121",
}
INTENDED_USE = "As the original authors state; not validated by RadLight."
_ORIGINS = {
    "arnoweng-chexnet": "arnoweng/CheXNet model.pth.tar (DenseNet-121, ChestX-ray14, 14 findings)",
    "jrzech-chexnet": "jrzech/reproduce-chexnet checkpoint (DenseNet-121, ChestX-ray14, 14 findings)",
    "xrv-densenet121": "torchxrayvision DenseNet-121 .pt (mlmed/torchxrayvision)",
}


def import_checkpoint(
    fmt: str,
    path: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    version: str | None = None,
) -> BuiltModel:
    """Read checkpoint ``path`` in format ``fmt``; write ``model.onnx`` and ``card.yaml`` to ``out_dir``.

    ``name`` defaults to one per format (:data:`DEFAULT_NAMES`), ``version`` to
    ``sha256-<first 12 hex digits of the checkpoint>``. Raises ModelError for an unknown format,
    a refused or unreadable file, or weights that do not fit DenseNet-121.
    """
    import torch

    from models.densenet import CamClassifier, DenseNet121
    from models.export import DEFAULT_OPSET, export_classifier_onnx

    if fmt not in FORMATS:
        raise ModelError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    source_sha256 = _sha256(path)
    name = name or DEFAULT_NAMES[fmt]
    version = version or f"sha256-{source_sha256[:12]}"
    try:
        validate_identifier(name, "model name")
        validate_identifier(version, "model version")
    except ValueError as exc:
        raise ModelError(str(exc)) from exc

    converted = convert(fmt, load_checkpoint(path), source=str(path))
    network = DenseNet121(len(converted.labels), in_channels=converted.in_channels)
    _load_strict(network, converted, source=str(path))
    model = CamClassifier(network).eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_sha256 = export_classifier_onnx(
        model,
        out_dir / ONNX_FILE_NAME,
        input_size=converted.preprocessing.input_size,
        in_channels=converted.in_channels,
    )
    card = ModelCard(
        card_format=1,
        name=name,
        version=version,
        task=TASK_CHEST_XRAY_CLASSIFICATION,
        trained=True,
        labels=_labels(converted),
        input=CHEST_XRAY_INPUT,
        preprocessing=converted.preprocessing,
        outputs=STANDARD_OUTPUT_NAMES,
        onnx_file=ONNX_FILE_NAME,
        sha256=onnx_sha256,
        provenance=Provenance(
            source=f"{fmt}: {path.name}",
            description=(
                f"Imported by `radlight models import {fmt}` from {path.name} "
                f"(sha256 {source_sha256}): {_ORIGINS[fmt]}. "
                + "; ".join(converted.notes)
                + f". Exported with torch {torch.__version__} (legacy exporter, opset "
                f"{DEFAULT_OPSET}); ONNX checked against torch to 1e-4."
            ),
            source_sha256=source_sha256,
        ),
        intended_use=INTENDED_USE,
        limitations=(
            "Not validated by RadLight; performance is as the original authors report, on their "
            "data, and may differ on this site's images.",
            "Not for primary diagnosis.",
        ),
        not_for_primary_diagnosis=True,
    )
    card_path = out_dir / CARD_FILE_NAME
    card.save(card_path)
    return BuiltModel(onnx_path=out_dir / ONNX_FILE_NAME, card_path=card_path, card=card)


def _sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such checkpoint file") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read checkpoint: {exc}") from exc


def _load_strict(network: "DenseNet121", converted: ConvertedCheckpoint, *, source: str) -> None:
    """Load every weight or fail listing unknown, missing and mis-shaped keys.

    ``num_batches_tracked`` (absent before torch 0.4.1, unused in eval mode) may be missing.
    """
    expected = network.state_dict()
    given = converted.state_dict
    unknown = sorted(set(given) - set(expected))
    missing = sorted(
        key for key in set(expected) - set(given) if not key.endswith(".num_batches_tracked")
    )
    shapes = sorted(
        f"{key} {tuple(given[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in set(given) & set(expected)
        if given[key].shape != expected[key].shape
    )
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {', '.join(_first(unknown))}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(_first(missing))}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s): {', '.join(_first(shapes))}")
    if problems:
        raise ModelError(f"{source}: weights do not fit DenseNet-121: " + "; ".join(problems))
    for key, tensor in given.items():
        if not tensor.dtype.is_floating_point and not key.endswith(".num_batches_tracked"):
            raise ModelError(f"{source}: {key} has dtype {tensor.dtype}, expected floating point")
    weights = {k: v.float() if v.dtype.is_floating_point else v for k, v in given.items()}
    network.load_state_dict(weights, strict=False)


def _first(items: list[str], limit: int = 12) -> list[str]:
    return items[:limit] + ([f"... ({len(items) - limit} more)"] if len(items) > limit else [])


def _labels(converted: ConvertedCheckpoint) -> tuple[LabelSpec, ...]:
    specs = []
    for label, threshold in zip(converted.labels, converted.thresholds, strict=True):
        code = finding_code(label)
        specs.append(
            LabelSpec(
                name=label,
                code=CodedConcept(
                    value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
                ),
                threshold=threshold,
            )
        )
    return tuple(specs)
