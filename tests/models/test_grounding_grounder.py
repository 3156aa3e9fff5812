"""CamPriorGrounder on a real NIH image: negation, anatomical priors, CAM restriction, the real
model through the registry adapter."""

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from models.export import BuiltModel
from models.grounding import (
    CamPriorGrounder,
    ClassifyResult,
    GroundedPhrase,
    LungFields,
    classifier_callable,
    grounder_for,
    parse_report,
    segment_lung_fields,
)
from models.grounding.evaluation import read_image
from models.labels import CHEST_XRAY14_LABELS
from models.registry import ModelRegistry

SIZE = 256


@pytest.fixture(scope="module")
def image(assets_dir: Path) -> npt.NDArray[np.float32]:
    full = read_image(assets_dir / "nih_cxr14" / "images" / "00009745_000.png")
    small = Image.fromarray(full).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).clip(0.0, 1.0)


@pytest.fixture(scope="module")
def fields(image: npt.NDArray[np.float32]) -> LungFields:
    return segment_lung_fields(image)


class SpotClassifier:
    """A classifier whose every CAM is one bright spot at a chosen pixel on a weak background;
    counts its calls."""

    def __init__(self, row: int, col: int) -> None:
        self.row, self.col, self.calls = row, col, 0

    def __call__(self, image: npt.NDArray[np.floating]) -> ClassifyResult:
        self.calls += 1
        rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
        spot = np.exp(-((rows - self.row) ** 2 + (cols - self.col) ** 2) / (2 * 8.0**2))
        cam = (0.2 + spot).astype(np.float32)
        return (
            {label: 0.1 + 0.05 * k for k, label in enumerate(CHEST_XRAY14_LABELS)},
            dict.fromkeys(CHEST_XRAY14_LABELS, cam),
        )


def _centre_of(mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    middle = len(rows) // 2
    order = np.lexsort((cols, rows))
    return int(rows[order[middle]]), int(cols[order[middle]])


def _peak(grounded: GroundedPhrase) -> tuple[int, int]:
    assert grounded.heatmap is not None
    row, col = np.unravel_index(int(np.argmax(grounded.heatmap)), grounded.heatmap.shape)
    return int(row), int(col)


def _only(results: list[GroundedPhrase]) -> GroundedPhrase:
    assert len(results) == 1, results
    return results[0]


def test_negated_and_empty_phrases_get_no_region_and_say_why(
    image: npt.NDArray[np.float32], fields: LungFields
) -> None:
    spot = SpotClassifier(*_centre_of(fields.zone("lower zone", "left")))
    results = CamPriorGrounder(spot).ground(
        image, "No pneumothorax. The lungs are clear. Effusion."
    )
    negated, empty, effusion = results
    assert (negated.heatmap, negated.box, negated.polygon, negated.reason) == (
        None,
        None,
        None,
        "negated",
    )
    assert negated.score == pytest.approx(0.1 + 0.05 * CHEST_XRAY14_LABELS.index("Pneumothorax"))
    assert (empty.heatmap, empty.score, empty.reason) == (None, None, "no finding or location")
    assert effusion.heatmap is not None
    assert effusion.reason is None


def test_no_groundable_phrase_runs_no_classifier(image: npt.NDArray[np.float32]) -> None:
    spot = SpotClassifier(0, 0)
    results = CamPriorGrounder(spot).ground(image, "No effusion. Normal bones.")
    assert [r.reason for r in results] == ["negated", "no finding or location"]
    assert spot.calls == 0


def test_the_prior_restricts_the_cam(image: npt.NDArray[np.float32], fields: LungFields) -> None:
    left_lower = fields.zone("lower zone", "left")
    spot = SpotClassifier(*_centre_of(left_lower))
    grounder = CamPriorGrounder(spot)
    anywhere = _only(grounder.ground(image, "Patchy opacity."))
    assert left_lower[_peak(anywhere)]  # no place said: the CAM decides, within the lungs
    right = _only(grounder.ground(image, "Patchy opacity in the right lower zone."))
    right_lower = fields.zone("lower zone", "right")
    assert right_lower[_peak(right)]  # the phrase's place overrules the CAM's peak
    assert right.heatmap is not None
    outside = ~np.asarray(
        np.pad(right_lower, 12)[:-24, :-24] | right_lower, dtype=np.bool_
    )  # generous margin for the blur
    assert float(right.heatmap[outside & left_lower].max()) < 0.05
    assert right.score == pytest.approx(0.1 + 0.05 * CHEST_XRAY14_LABELS.index("Consolidation"))


def test_cardiomegaly_lights_the_heart(image: npt.NDArray[np.float32], fields: LungFields) -> None:
    spot = SpotClassifier(*_centre_of(fields.zone("upper zone", "right")))  # CAM far from heart
    grounded = _only(CamPriorGrounder(spot).ground(image, "There is cardiomegaly."))
    heart = fields.zone("heart", None)
    assert heart[_peak(grounded)]
    assert grounded.box is not None
    assert grounded.polygon is not None
    x, y, w, h = grounded.box
    rows, cols = np.nonzero(heart)
    assert x <= cols.mean() <= x + w
    assert y <= rows.mean() <= y + h
    xs = [p[0] for p in grounded.polygon]
    ys = [p[1] for p in grounded.polygon]
    assert (min(xs), min(ys), max(xs), max(ys)) == (x, y, x + w, y + h)


def test_a_place_without_a_finding_grounds_to_the_place(
    image: npt.NDArray[np.float32], fields: LungFields
) -> None:
    spot = SpotClassifier(*_centre_of(fields.zone("lower zone", "left")))
    grounded = _only(CamPriorGrounder(spot).ground(image, "Increased density at the right apex."))
    assert grounded.score is None
    assert grounded.reason is None
    assert fields.zone("apex", "right")[_peak(grounded)]
    assert grounded.heatmap is not None
    assert grounded.heatmap.dtype == np.float32
    assert grounded.heatmap.shape == image.shape
    assert float(grounded.heatmap.min()) >= 0.0
    assert float(grounded.heatmap.max()) == 1.0


def test_the_registry_model_through_the_adapter(
    image: npt.NDArray[np.float32], tiny_model: BuiltModel, tmp_path: Path
) -> None:
    entry = ModelRegistry(tmp_path / "models").install(tiny_model.onnx_path, tiny_model.card)
    probabilities, cams = classifier_callable(entry)(image)
    assert set(probabilities) == set(CHEST_XRAY14_LABELS)
    assert all(cam.shape == image.shape for cam in cams.values())
    grounder = grounder_for(entry)
    assert grounder.model == f"{entry.name} {entry.version}"
    results = grounder.ground(image, "Right lower zone nodule. No effusion.")
    nodule, effusion = results
    assert nodule.score == pytest.approx(probabilities["Nodule"])
    assert nodule.heatmap is not None
    assert nodule.box is not None
    assert effusion.reason == "negated"
    assert effusion.score == pytest.approx(probabilities["Effusion"])


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ([[0.0] * 16] * 16, TypeError),
        (np.zeros((16,), dtype=np.float32), ValueError),
        (np.zeros((2, 16, 16), dtype=np.float32), ValueError),
        (np.full((16, 16), 2.0, dtype=np.float32), ValueError),
        (np.zeros((16, 16), dtype=np.int16), ValueError),
    ],
)
def test_bad_images_are_refused(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        CamPriorGrounder(SpotClassifier(0, 0)).ground(bad, "Effusion.")  # type: ignore[arg-type]


def test_a_large_uint8_image_is_grounded_on_its_own_grid(
    image: npt.NDArray[np.float32], fields: LungFields
) -> None:
    large = np.asarray(
        Image.fromarray((image * 255).astype(np.uint8)).resize((1300, 1100)), dtype=np.uint8
    )  # 1100 rows, 1300 columns: grounded at 512 wide, returned at full size
    spot = SpotClassifier(0, 0)
    grounded = _only(CamPriorGrounder(spot).ground(large, "There is cardiomegaly."))
    assert grounded.heatmap is not None
    assert grounded.heatmap.shape == (1100, 1300)
    assert float(grounded.heatmap.max()) == pytest.approx(1.0)
    assert grounded.box is not None
    x, y, w, h = grounded.box
    heart = fields.zone("heart", None)  # on the 256 grid: scale its centre to the large image
    rows, cols = np.nonzero(heart)
    assert x <= cols.mean() * 1300 / SIZE <= x + w
    assert y <= rows.mean() * 1100 / SIZE <= y + h


def test_a_place_missing_from_the_image_is_said(fields: LungFields) -> None:
    one_lung = LungFields(right=fields.right, left=np.zeros_like(fields.left))
    phrase = parse_report("There is cardiomegaly. Left basal atelectasis.")
    grounder = CamPriorGrounder(SpotClassifier(0, 0))
    heart, left = (grounder.ground_phrase(p, one_lung, {}, {}) for p in phrase)
    assert (heart.heatmap, heart.reason) == (None, "location not found on this image")
    assert (left.heatmap, left.reason) == (None, "location not found on this image")
