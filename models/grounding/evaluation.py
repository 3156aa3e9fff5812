"""How well phrases ground on real images: NIH expert boxes, and lung fields against Montgomery.

**Grounding** (:func:`evaluate_grounding`). Each NIH expert box set (one image, one finding)
becomes one phrase built from its label, in two wordings:

- ``finding``: the finding alone, as a report would name it ("There is cardiomegaly.",
  "There is a nodule.");
- ``described``: the finding with the side and zone a radiologist would write ("Nodule in the
  right upper zone."), the side and zone read from the box centre against the image's lung
  fields. It uses the expert box to write the words, as a report's author uses the image: it
  measures grounding *given* a report that says where, not finding the place unaided.

Each phrase is grounded by every method asked for, on the image resized to ``work_size`` pixels
(boxes are scaled onto that grid): ``cam-prior`` (the classifier's CAM times the anatomical
prior, :class:`CamPriorGrounder`), ``cam`` (the CAM alone), ``prior`` (the anatomical prior alone:
no classifier at all) and ``centre`` (a Gaussian at the image centre, a floor any method must
beat). Scores (:mod:`models.localisation`): pointing game over all cases; IoU and Dice with the
threshold tuned on one half of the patients and reported on the other. A phrase the method cannot
ground on an image gets an all-zero heatmap: a miss, IoU 0.

**Lung fields** (:func:`evaluate_lung_fields`): Dice of :func:`segment_lung_fields` per side
against the Montgomery right/left masks.
"""

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.grounding.grounder import CamPriorGrounder, Classify, ClassifyResult, FloatArray
from models.grounding.lungs import LungFields, segment_lung_fields
from models.grounding.phrases import Phrase, parse_report
from models.localisation import (
    BOX_LABEL_ALIASES,
    Box,
    LocalisationCase,
    TunedReport,
    dice,
    pointing_hit,
    tune_and_report,
)

METHODS: tuple[str, ...] = ("cam-prior", "cam", "prior", "centre")
WORDINGS: tuple[str, ...] = ("finding", "described")
WORK_SIZE = 256
# How a report names each boxed finding.
FINDING_WORDS: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "pleural effusion",
    "Infiltration": "infiltrate",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "pulmonary edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural thickening",
    "Hernia": "hiatal hernia",
}


@dataclass(frozen=True)
class BoxedImage:
    """One image and the expert boxes of one of its findings."""

    image_index: str
    path: Path
    finding: str
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class MethodResult:
    """One method on one wording of one box set: pointing game over all cases, and the split."""

    method: str
    wording: str
    n_cases: int
    hits: int
    tuned: TunedReport

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n_cases if self.n_cases else float("nan")


def read_boxed_images(folder: Path, *, limit: int | None = None) -> list[BoxedImage]:
    """Box sets of a NIH assets folder (``bboxes.csv`` and ``images/``), sorted by image."""
    folder = Path(folder)
    grouped: dict[tuple[str, str], list[Box]] = {}
    files: dict[str, str] = {}
    with (folder / "bboxes.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            index = row["image_index"].strip()
            label = row["finding_label"].strip()
            label = BOX_LABEL_ALIASES.get(label, label)
            box = Box(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
            grouped.setdefault((index, label), []).append(box)
            files[index] = (row.get("file") or f"images/{index}").strip()
    result = [
        BoxedImage(index, folder / files[index], label, tuple(boxes))
        for (index, label), boxes in sorted(grouped.items())
    ]
    return result[:limit] if limit is not None else result


def read_image(path: Path) -> npt.NDArray[np.float32]:
    """A PNG/JPEG radiograph as a display image in [0, 1] (RGB/RGBA files hold gray)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)


def describe(
    finding: str, boxes: Sequence[Box], fields: LungFields, image_shape: tuple[int, int]
) -> str:
    """The ``described`` phrase: the finding with its side and zone, read from the boxes."""
    word = FINDING_WORDS.get(finding, finding.lower())
    if finding in ("Cardiomegaly", "Hernia"):
        return f"There is {word}."
    rows, cols = fields.shape
    row_scale, col_scale = rows / image_shape[0], cols / image_shape[1]
    centre_y = np.mean([(b.y + b.h / 2) * row_scale for b in boxes])
    both = fields.right | fields.left
    right_cols = np.flatnonzero(fields.right.any(axis=0))
    left_cols = np.flatnonzero(fields.left.any(axis=0))
    middle = (
        (right_cols.max() + left_cols.min()) / 2 if right_cols.size and left_cols.size else cols / 2
    )
    sides = {"right" if (b.x + b.w / 2) * col_scale < middle else "left" for b in boxes}
    side = sides.pop() if len(sides) == 1 else "both"
    lung_rows = np.flatnonzero(both.any(axis=1))
    top, bottom = (lung_rows[0], lung_rows[-1] + 1) if lung_rows.size else (0, rows)
    position = (centre_y - top) / max(bottom - top, 1)
    zone = "upper" if position < 1 / 3 else "middle" if position < 2 / 3 else "lower"
    if side == "both":
        return f"Bilateral {zone} zone {word}."
    return f"{word.capitalize()} in the {side} {zone} zone."


def _centre_map(shape: tuple[int, int]) -> FloatArray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    y = (rows + 0.5) / shape[0] - 0.5
    x = (cols + 0.5) / shape[1] - 0.5
    result: FloatArray = np.exp(-(x * x + y * y) / (2 * 0.2**2)).astype(np.float32)
    return result


def _no_classifier(image: npt.NDArray[np.floating]) -> ClassifyResult:
    return {}, {}


def evaluate_grounding(
    boxed: Sequence[BoxedImage],
    *,
    classify: Classify | None = None,
    methods: Iterable[str] = METHODS,
    work_size: int = WORK_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> list[MethodResult]:
    """Every method on both wordings of every box set (see the module doc)."""
    methods = tuple(methods)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if classify is None and {"cam-prior", "cam"} & set(methods):
        raise ValueError("methods 'cam-prior' and 'cam' need a classifier")
    if not boxed:
        raise ValueError("no boxed images")
    cases: dict[tuple[str, str], list[LocalisationCase]] = {}
    prior_grounder = CamPriorGrounder(_no_classifier)
    cam_grounder = CamPriorGrounder(classify) if classify is not None else None
    cache: dict[Path, tuple[npt.NDArray[np.float32], tuple[int, int], ClassifyResult]] = {}
    for number, item in enumerate(boxed):
        if item.path not in cache:
            full = read_image(item.path)
            small = np.asarray(
                Image.fromarray(full).resize((work_size, work_size), Image.Resampling.BILINEAR),
                dtype=np.float32,
            ).clip(0.0, 1.0)
            outputs = classify(small) if classify is not None else ({}, {})
            cache = {item.path: (small, (int(full.shape[0]), int(full.shape[1])), outputs)}
        small, full_shape, (probabilities, cams) = cache[item.path]
        fields = segment_lung_fields(small)
        texts = {
            "finding": f"There is {FINDING_WORDS.get(item.finding, item.finding.lower())}.",
            "described": describe(item.finding, item.boxes, fields, full_shape),
        }
        for wording in WORDINGS:
            phrase = parse_report(texts[wording])[0]
            for method in methods:
                heat = _method_heatmap(
                    method,
                    phrase,
                    fields,
                    probabilities,
                    cams,
                    item.finding,
                    prior_grounder,
                    cam_grounder,
                )
                case = LocalisationCase(
                    item.image_index, item.finding, heat, item.boxes, full_shape
                )
                cases.setdefault((method, wording), []).append(case)
        if progress is not None:
            progress(number + 1, len(boxed))
    results = []
    for (method, wording), group in cases.items():
        hits = sum(pointing_hit(c.heatmap, c.boxes, image_shape=c.image_shape) for c in group)
        results.append(MethodResult(method, wording, len(group), hits, tune_and_report(group)))
    return results


def _method_heatmap(
    method: str,
    phrase: Phrase,
    fields: LungFields,
    probabilities: dict[str, float],
    cams: dict[str, FloatArray],
    finding: str,
    prior_grounder: CamPriorGrounder,
    cam_grounder: CamPriorGrounder | None,
) -> FloatArray:
    if method == "centre":
        return _centre_map(fields.shape)
    if method == "cam":
        if finding not in cams:
            raise ValueError(f"the classifier gives no map for {finding}")
        return cams[finding]
    if method == "prior":
        grounded = prior_grounder.ground_phrase(phrase, fields, {}, {})
    else:
        assert cam_grounder is not None
        grounded = cam_grounder.ground_phrase(phrase, fields, probabilities, cams)
    if grounded.heatmap is None:  # e.g. no heart found between the lungs: scored as a miss
        return np.zeros(fields.shape, dtype=np.float32)
    return grounded.heatmap


@dataclass(frozen=True)
class LungDice:
    """Dice per image and side of the segmented lung fields against reference masks."""

    images: tuple[str, ...]
    right: tuple[float, ...]
    left: tuple[float, ...]
    fallbacks: int

    @property
    def mean_right(self) -> float:
        return float(np.mean(self.right))

    @property
    def mean_left(self) -> float:
        return float(np.mean(self.left))

    @property
    def mean(self) -> float:
        return float(np.mean(self.right + self.left))

    @property
    def median(self) -> float:
        return float(np.median(self.right + self.left))


def evaluate_lung_fields(folder: Path, *, limit: int | None = None) -> LungDice:
    """Dice against the Montgomery masks (``masks/``: 1 right lung, 2 left lung)."""
    folder = Path(folder)
    files = sorted((folder / "images").glob("*.png"))[:limit]
    if not files:
        raise ValueError(f"no images in {folder / 'images'}")
    names, right, left, fallbacks = [], [], [], 0
    for path in files:
        fields = segment_lung_fields(read_image(path))
        with Image.open(folder / "masks" / path.name) as mask_file:
            mask = np.asarray(mask_file)
        names.append(path.name)
        right.append(dice(fields.right, mask == 1))
        left.append(dice(fields.left, mask == 2))
        fallbacks += bool(fields.fallback)
    return LungDice(tuple(names), tuple(right), tuple(left), fallbacks)
