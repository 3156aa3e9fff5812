"""Preprocessing reproduces CheXNet's torchvision pipeline; checked against a numpy rewrite."""

import numpy as np
import numpy.typing as npt
import pytest

from models.card import CHEXNET_PREPROCESSING, IMAGENET_MEAN, IMAGENET_STD
from models.preprocess import CropGeometry, prepare_batch, prepare_image, resized_shape

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def _triangle_weights(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """PIL's BILINEAR resampling weights [out, in]: a triangle widened by the reduction factor."""
    scale = in_size / out_size
    width = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        low = max(int(centre - width + 0.5), 0)
        high = min(int(centre + width + 0.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(low, high) - centre + 0.5) / width))
        weights[i, low:high] = taps / taps.sum()
    return weights


def _reference_levels(gray: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.float64]:
    """torchvision Resize(size) + CenterCrop(size) in numpy: 8-bit levels of the crop."""
    rows, cols = gray.shape
    if rows <= cols:
        new_rows, new_cols = size, int(size * cols / rows)
    else:
        new_rows, new_cols = int(size * rows / cols), size
    # PIL filters columns first and rounds to 8 bits between the two passes.
    across = np.clip(np.round(gray @ _triangle_weights(cols, new_cols).T), 0, 255)
    resized = np.clip(np.round(_triangle_weights(rows, new_rows) @ across), 0, 255)
    top = round((new_rows - size) / 2.0)
    left = round((new_cols - size) / 2.0)
    return resized[top : top + size, left : left + size]


def _levels_from_tensor(tensor: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    levels: npt.NDArray[np.float32] = (tensor * STD + MEAN) * 255.0
    return levels


@pytest.mark.parametrize("crop_columns", [None, (112, 912)])
def test_matches_reference_on_a_real_image(
    nih_images: list[npt.NDArray[np.uint8]], crop_columns: tuple[int, int] | None
) -> None:
    gray = nih_images[0]
    if crop_columns is not None:  # a portrait image exercises the centre crop
        gray = np.ascontiguousarray(gray[:, crop_columns[0] : crop_columns[1]])
    prepared = prepare_image(gray, CHEXNET_PREPROCESSING)
    assert prepared.tensor.shape == (3, 224, 224)
    assert prepared.tensor.dtype == np.float32

    levels = _levels_from_tensor(prepared.tensor)
    # /255 of 8-bit values: every channel recovers the same whole gray levels.
    np.testing.assert_allclose(levels, np.round(levels), atol=2e-3)
    np.testing.assert_allclose(levels[0], levels[1], atol=2e-3)
    np.testing.assert_allclose(levels[0], levels[2], atol=2e-3)
    expected = _reference_levels(gray, 224)
    difference = np.abs(np.round(levels[0]) - expected)
    assert difference.max() <= 1  # PIL's fixed-point arithmetic may round the other way
    assert (difference == 0).mean() > 0.99
    # Normalisation per channel, exactly as torchvision's Normalize.
    recomputed = ((np.round(levels) / np.float32(255.0)).astype(np.float32) - MEAN) / STD
    np.testing.assert_allclose(prepared.tensor, recomputed, atol=1e-5)


def test_geometry_of_a_portrait_image() -> None:
    prepared = prepare_image(np.zeros((1024, 800), np.uint8), CHEXNET_PREPROCESSING)
    geometry = prepared.geometry
    assert geometry == CropGeometry(
        original_shape=(1024, 800), resized_shape=(286, 224), crop_origin=(31, 0), crop_size=224
    )
    top, left, bottom, right = geometry.crop_box()
    assert top == pytest.approx(31 * 1024 / 286)
    assert bottom == pytest.approx(255 * 1024 / 286)
    assert (left, right) == (0.0, 800.0)
    rows, cols = geometry.to_original([0.0, 224.0], [0.0, 112.0])
    assert rows.tolist() == pytest.approx([top, bottom])
    assert cols.tolist() == pytest.approx([0.0, 400.0])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((1024, 1024), (224, 224)), ((1024, 800), (286, 224)), ((800, 1024), (224, 286))],
)
def test_resized_shape_follows_torchvision(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert resized_shape(shape, 224) == expected


def test_centre_crop_rounds_like_torchvision() -> None:
    # 225 rows leave a margin of 1: round(0.5) is 0; 227 leave 3: round(1.5) is 2.
    assert prepare_image(
        np.zeros((225, 224), np.uint8), CHEXNET_PREPROCESSING
    ).geometry.crop_origin == (0, 0)
    assert prepare_image(
        np.zeros((227, 224), np.uint8), CHEXNET_PREPROCESSING
    ).geometry.crop_origin == (2, 0)


def test_float_input_is_read_as_unit_range(nih_images: list[npt.NDArray[np.uint8]]) -> None:
    gray = nih_images[1]
    from_uint8 = prepare_image(gray, CHEXNET_PREPROCESSING).tensor
    from_float = prepare_image(gray.astype(np.float32) / 255.0, CHEXNET_PREPROCESSING).tensor
    # Same pipeline without 8-bit rounding after the resize: within one gray level.
    assert np.abs(_levels_from_tensor(from_float) - _levels_from_tensor(from_uint8)).max() <= 1.01


def test_batch_stacks_images(nih_images: list[npt.NDArray[np.uint8]]) -> None:
    batch, geometries = prepare_batch(nih_images, CHEXNET_PREPROCESSING)
    assert batch.shape == (3, 3, 224, 224)
    assert batch.dtype == np.float32
    assert len(geometries) == 3
    np.testing.assert_array_equal(
        batch[2], prepare_image(nih_images[2], CHEXNET_PREPROCESSING).tensor
    )
    with pytest.raises(ValueError, match="no images"):
        prepare_batch([], CHEXNET_PREPROCESSING)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), np.uint8), "2-D"),
        (np.zeros((0, 4), np.uint8), "2-D"),
        (np.zeros((4, 4), np.uint16), "uint8 or floating"),
        (np.full((4, 4), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float64), r"\[0, 1\]"),
    ],
)
def test_invalid_images_are_refused(image: npt.NDArray[np.generic], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_image(image, CHEXNET_PREPROCESSING)


def test_non_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="numpy array"):
        prepare_image([[0, 1]], CHEXNET_PREPROCESSING)  # type: ignore[arg-type]
