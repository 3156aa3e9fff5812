"""Fidelity check: does an installed model reproduce reference predictions on the same images?

A reference file is a CSV with the image file name in the first column and one column per label,
named ``<label>`` or ``prob_<label>`` (the format of jrzech/reproduce-chexnet's ``preds.csv``,
whose first column is ``Image Index`` or ``image_index``); ``.csv.gz`` is read too. Columns are
matched to the model's card by label name, never by position.

:func:`verify_model` runs the model over PNG files (converted to 8-bit grayscale, as RGBA NIH
files hold R=G=B), prepared exactly as the card says, and reports the largest absolute difference
per label and overall. With the real jrzech/reproduce-chexnet checkpoint imported, the 34 images of
``nih_cxr14/images`` must reproduce ``reference/chexnet_jrzech_preds_subset.csv`` within 1e-3.
"""

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.metrics import open_text
from models.preprocess import prepare_batch
from models.registry import ModelEntry
from models.runtime import load_model

DEFAULT_TOLERANCE = 1e-3
IMAGE_SUFFIXES = (".png",)
_PREFIX = "prob_"


@dataclass(frozen=True)
class PredictionTable:
    """Scores ``[N, L]`` for named images and labels."""

    images: tuple[str, ...]
    labels: tuple[str, ...]
    scores: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.images), len(self.labels)):
            raise ValueError(
                f"scores {self.scores.shape} do not match {len(self.images)} images x "
                f"{len(self.labels)} labels"
            )
        if len(set(self.images)) != len(self.images):
            raise ValueError("an image appears twice")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("a label appears twice")


def read_predictions(path: Path) -> PredictionTable:
    """Read a predictions CSV (see module doc); every score must be a finite number."""
    path = Path(path)
    with open_text(path) as handle:
        rows = list(csv.reader(handle))
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected a header with an image column and label columns")
    header = rows[0]
    labels = tuple(
        name[len(_PREFIX) :] if name.startswith(_PREFIX) else name for name in header[1:]
    )
    images = []
    scores = np.empty((len(rows) - 1, len(labels)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {i + 2} has {len(row)} fields, header {len(header)}")
        images.append(row[0])
        try:
            scores[i] = [float(value) for value in row[1:]]
        except ValueError as exc:
            raise ValueError(f"{path}: line {i + 2}: {exc}") from exc
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: scores hold NaN or infinity")
    return PredictionTable(images=tuple(images), labels=labels, scores=scores)


def write_predictions(path: Path, table: PredictionTable) -> None:
    """Write ``image_index,prob_<label>...``; scores round-trip exactly (shortest ``repr``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image_index", *(f"{_PREFIX}{label}" for label in table.labels)])
        for name, row in zip(table.images, table.scores, strict=True):
            writer.writerow([name, *(repr(float(value)) for value in row)])
    tmp.replace(path)


def read_gray_png(path: Path) -> npt.NDArray[np.uint8]:
    """An image file as a 2-D uint8 display image (RGB/RGBA converted with PIL's ``L``)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def list_images(directory: Path) -> list[Path]:
    """The PNG files of ``directory``, by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def predict_files(
    entry: ModelEntry, paths: Sequence[Path], *, batch_size: int = 8
) -> PredictionTable:
    """Run an installed model over image files, in batches, as the worker would prepare them."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not paths:
        raise ValueError("no images to run")
    model = load_model(entry)
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [read_gray_png(path) for path in paths[start : start + batch_size]]
        batch, _ = prepare_batch(images, entry.card.preprocessing)
        chunks.append(model.infer(batch).probabilities.astype(np.float64))
    return PredictionTable(
        images=tuple(path.name for path in paths),
        labels=entry.card.label_names,
        scores=np.concatenate(chunks),
    )


@dataclass(frozen=True)
class LabelDifference:
    """The largest absolute difference of one label and where it occurs."""

    label: str
    max_abs_diff: float
    image: str
    predicted: float
    reference: float


@dataclass(frozen=True)
class VerifyReport:
    """Result of comparing a model's predictions with a reference on the same images."""

    per_label: tuple[LabelDifference, ...]
    tolerance: float
    n_images: int
    unchecked_labels: tuple[str, ...]  # model labels the reference lacks
    extra_images: tuple[str, ...]  # images in the folder the reference lacks

    @property
    def max_abs_diff(self) -> float:
        return max(item.max_abs_diff for item in self.per_label)

    @property
    def worst(self) -> LabelDifference:
        return max(self.per_label, key=lambda item: item.max_abs_diff)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def failures(self) -> tuple[LabelDifference, ...]:
        return tuple(item for item in self.per_label if item.max_abs_diff > self.tolerance)


def compare_predictions(
    predicted: PredictionTable,
    reference: PredictionTable,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_images: Sequence[str] = (),
) -> VerifyReport:
    """Largest ``|predicted - reference|`` per reference label over the reference's images.

    Every reference image and label must be in ``predicted`` (ValueError otherwise): a reference
    that cannot be checked in full is not a pass.
    """
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    if not reference.images:
        raise ValueError("the reference holds no images")
    unknown = [label for label in reference.labels if label not in predicted.labels]
    if unknown:
        raise ValueError(f"the model has no label(s) {unknown}; it has {list(predicted.labels)}")
    row_of = {name: i for i, name in enumerate(predicted.images)}
    missing = [name for name in reference.images if name not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} reference images were not run, e.g. {missing[:5]}")
    rows = np.array([row_of[name] for name in reference.images], dtype=np.intp)
    cols = np.array([predicted.labels.index(label) for label in reference.labels], dtype=np.intp)
    ours = predicted.scores[np.ix_(rows, cols)]
    diff = np.abs(ours - reference.scores)
    per_label = []
    for j, label in enumerate(reference.labels):
        i = int(np.argmax(diff[:, j]))
        per_label.append(
            LabelDifference(
                label=label,
                max_abs_diff=float(diff[i, j]),
                image=reference.images[i],
                predicted=float(ours[i, j]),
                reference=float(reference.scores[i, j]),
            )
        )
    return VerifyReport(
        per_label=tuple(per_label),
        tolerance=tolerance,
        n_images=len(reference.images),
        unchecked_labels=tuple(lb for lb in predicted.labels if lb not in reference.labels),
        extra_images=tuple(extra_images),
    )


def verify_model(
    entry: ModelEntry,
    image_dir: Path,
    reference: PredictionTable,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 8,
) -> VerifyReport:
    """Run ``entry`` on the reference's images found in ``image_dir`` and compare."""
    files = {path.name: path for path in list_images(image_dir)}
    missing = [name for name in reference.images if name not in files]
    if missing:
        raise ValueError(
            f"{len(missing)} reference images are not in {image_dir}, e.g. {missing[:5]}"
        )
    predicted = predict_files(
        entry, [files[name] for name in reference.images], batch_size=batch_size
    )
    wanted = set(reference.images)
    extra = tuple(name for name in files if name not in wanted)
    return compare_predictions(predicted, reference, tolerance=tolerance, extra_images=extra)
