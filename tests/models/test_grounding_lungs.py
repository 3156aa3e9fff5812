"""Lung fields on real radiographs (Montgomery masks, NIH images) and the zones derived from them."""

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from models.grounding import ZONE_NAMES, LungFields, segment_lung_fields
from models.grounding.evaluation import evaluate_lung_fields, read_image
from models.localisation import dice


@pytest.fixture(scope="module")
def montgomery(assets_dir: Path) -> Path:
    return assets_dir / "montgomery_lungs"


@pytest.fixture(scope="module")
def nih_fields(assets_dir: Path) -> tuple[npt.NDArray[np.float32], LungFields]:
    image = read_image(assets_dir / "nih_cxr14" / "images" / "00009745_000.png")
    return image, segment_lung_fields(image)


def _centroid(mask: npt.NDArray[np.bool_]) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


def test_dice_against_montgomery_masks(montgomery: Path) -> None:
    figures = evaluate_lung_fields(montgomery, limit=8)
    assert len(figures.images) == 8
    assert figures.fallbacks == 0
    # Measured over all 138 images: mean 0.82 (docs/GROUNDING.md); these 8 are normal cases.
    assert figures.mean >= 0.78, figures
    assert min(figures.right + figures.left) >= 0.6, figures


def test_sides_are_the_patients(montgomery: Path) -> None:
    path = montgomery / "images" / "MCUCXR_0001_0.png"
    fields = segment_lung_fields(read_image(path))
    with Image.open(montgomery / "masks" / path.name) as handle:
        truth = np.asarray(handle)
    assert _centroid(fields.right)[1] < _centroid(fields.left)[1]  # patient's right: image left
    assert dice(fields.right, truth == 1) > 0.8
    assert dice(fields.left, truth == 2) > 0.8
    assert not (fields.right & fields.left).any()


def test_zones_partition_and_order(nih_fields: tuple[npt.NDArray[np.float32], LungFields]) -> None:
    _, fields = nih_fields
    for side in ("right", "left"):
        lung = fields.zone("lung", side)
        upper, middle, lower = (
            fields.zone(f"{z} zone", side) for z in ("upper", "middle", "lower")
        )
        assert np.array_equal(upper | middle | lower, lung)
        assert not (upper & middle).any()
        assert not (middle & lower).any()
        assert _centroid(upper)[0] < _centroid(middle)[0] < _centroid(lower)[0]
        assert not (fields.zone("apex", side) & ~upper).any()
        assert not (fields.zone("base", side) & ~lower).any()
        angle = fields.zone("costophrenic angle", side)
        assert angle.any()
        assert not (angle & ~lower).any()
    # The right costophrenic angle is lateral: on the image's left edge of the right lung.
    assert _centroid(fields.zone("costophrenic angle", "right"))[1] < _centroid(fields.right)[1]
    assert _centroid(fields.zone("costophrenic angle", "left"))[1] > _centroid(fields.left)[1]
    assert _centroid(fields.zone("hilum", "right"))[1] > _centroid(fields.right)[1]  # medial
    both = fields.zone("upper zone", None)
    assert np.array_equal(both, fields.zone("upper zone", "bilateral"))
    assert np.array_equal(
        both, fields.zone("upper zone", "right") | fields.zone("upper zone", "left")
    )


def test_heart_lies_between_the_lungs_below_the_mediastinum(
    nih_fields: tuple[npt.NDArray[np.float32], LungFields],
) -> None:
    _, fields = nih_fields
    heart, mediastinum = fields.zone("heart", None), fields.zone("mediastinum", None)
    assert heart.any()
    assert mediastinum.any()
    assert not (heart & (fields.right | fields.left)).any()
    heart_row, heart_col = _centroid(heart)
    assert _centroid(fields.right)[1] < heart_col < _centroid(fields.left)[1]
    assert _centroid(mediastinum)[0] < heart_row
    retro = fields.zone("retrocardiac", None)
    assert (retro & fields.left).any()
    assert not (retro & fields.right).any()
    # 00009745_000 has an expert Cardiomegaly box: the heart region lies mostly inside it.
    box = np.zeros_like(heart)
    box[400:782, 329:786] = True
    assert (heart & box).sum() / heart.sum() > 0.6


def test_any_size_and_uint8(assets_dir: Path) -> None:
    image = read_image(assets_dir / "nih_cxr14" / "images" / "00009745_000.png")
    small = np.asarray(Image.fromarray((image * 255).astype(np.uint8)).resize((300, 200)))
    fields = segment_lung_fields(small)
    assert fields.shape == (200, 300)
    assert fields.right.dtype == np.bool_
    assert fields.right.any()
    assert fields.left.any()


def test_a_blank_image_gets_the_template_and_says_so() -> None:
    fields = segment_lung_fields(np.zeros((64, 64), dtype=np.float32))
    assert fields.fallback == ("right", "left")
    assert fields.right.any()
    assert fields.left.any()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 64, 64), dtype=np.float32), "2-D image"),
        (np.zeros((4, 4), dtype=np.float32), "at least 8x8"),
        (np.full((32, 32), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((32, 32), dtype=np.int32), "pixels"),
    ],
)
def test_bad_images_are_refused(image: npt.NDArray[np.generic], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment_lung_fields(image)  # type: ignore[arg-type]


def test_zone_names_are_checked(nih_fields: tuple[npt.NDArray[np.float32], LungFields]) -> None:
    _, fields = nih_fields
    with pytest.raises(ValueError, match="unknown zone 'elbow'"):
        fields.zone("elbow", None)
    assert all(fields.zone(name, None).shape == fields.shape for name in ZONE_NAMES)
    with pytest.raises(ValueError, match="shapes differ"):
        LungFields(right=fields.right, left=fields.left[:10])
