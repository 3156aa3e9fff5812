"""Class activation maps: known answers for the matmul and for the mapping back to the image."""

import numpy as np
import pytest

from models.cam import ImageCam, _axis, cam_to_image, class_activation_maps, normalise_map
from models.preprocess import CropGeometry


def _identity_geometry(size: int) -> CropGeometry:
    return CropGeometry(
        original_shape=(size, size), resized_shape=(size, size), crop_origin=(0, 0), crop_size=size
    )


def test_maps_are_weights_times_features() -> None:
    features = np.zeros((2, 3, 3), dtype=np.float32)
    features[0, 1, 2] = 4.0  # channel 0: one hot spot
    features[1] = 1.0  # channel 1: everywhere
    weights = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=np.float32)
    maps = class_activation_maps(features, weights)
    assert maps.shape == (3, 3, 3)
    assert maps.dtype == np.float32
    expected_first = np.zeros((3, 3), np.float32)
    expected_first[1, 2] = 8.0
    np.testing.assert_array_equal(maps[0], expected_first)
    np.testing.assert_array_equal(maps[1], np.ones((3, 3), np.float32))
    np.testing.assert_array_equal(maps[2], expected_first / 2 - 1)


def test_batched_maps_and_bias_give_the_logit_as_mean() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((4, 5, 7, 7), dtype=np.float32)
    weights = rng.standard_normal((14, 5)).astype(np.float32)
    bias = rng.standard_normal(14).astype(np.float32)
    maps = class_activation_maps(features, weights, bias=bias)
    assert maps.shape == (4, 14, 7, 7)
    np.testing.assert_allclose(
        maps[2], class_activation_maps(features[2], weights, bias=bias), rtol=1e-6
    )
    logits = features.mean(axis=(2, 3)) @ weights.T + bias
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("features", "weights"),
    [
        (np.zeros((3, 3), np.float32), np.zeros((1, 3), np.float32)),
        (np.zeros((2, 3, 3), np.float32), np.zeros((1, 3), np.float32)),
        (np.zeros((2, 3, 3), np.float32), np.zeros(2, np.float32)),
    ],
)
def test_shape_mismatch_is_a_value_error(features: np.ndarray, weights: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"features|weights"):
        class_activation_maps(features, weights)


def test_normalise_map() -> None:
    np.testing.assert_array_equal(
        normalise_map(np.array([[2, 4], [6, 10]], dtype=np.float32)), [[0, 0.25], [0.5, 1]]
    )
    np.testing.assert_array_equal(normalise_map(np.full((2, 2), 3.0)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        normalise_map(np.array([[np.nan, 1.0]], dtype=np.float32))


def test_bilinear_upsampling_known_answer() -> None:
    # Two cells over four pixels: centres at 0.25 and 0.75 of a cell apart, edges held.
    image = cam_to_image(np.array([[5.0, 7.0]], dtype=np.float32), _identity_geometry(4))
    assert image.shape == (4, 4)
    assert image.dtype == np.float32
    for row in image:
        np.testing.assert_allclose(row, [0.0, 0.25, 0.75, 1.0])


def test_peak_lands_where_the_cell_is() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[3, 5] = 1.0
    image = cam_to_image(cam, _identity_geometry(14))
    assert image.max() == pytest.approx(0.5625)  # 0.75 * 0.75 at the four nearest pixels
    peak_rows, peak_cols = np.nonzero(image == image.max())
    assert set(peak_rows) == {6, 7}
    assert set(peak_cols) == {10, 11}


def test_outside_the_centre_crop_is_zero() -> None:
    # A landscape 100 x 200 image: resized to 224 x 448, crop columns 112..336 = original 50..150.
    geometry = CropGeometry(
        original_shape=(100, 200), resized_shape=(224, 448), crop_origin=(0, 112), crop_size=224
    )
    cam = np.ones((7, 7), np.float32)
    cam[0, 0] = 0.0
    image = cam_to_image(cam, geometry)
    assert image.shape == (100, 200)
    assert not image[:, :50].any()
    assert not image[:, 150:].any()
    assert (image[:, 60:140] > 0).all()
    assert image.min() >= 0.0
    assert image.max() <= 1.0


def test_peak_maps_to_original_coordinates() -> None:
    geometry = CropGeometry(
        original_shape=(1024, 800), resized_shape=(286, 224), crop_origin=(31, 0), crop_size=224
    )
    cam = np.zeros((7, 7), np.float32)
    cam[2, 3] = 1.0
    image = cam_to_image(cam, geometry)
    rows, cols = geometry.to_original(80.0, 112.0)  # the centre of cell (2, 3) in model space
    peak = np.unravel_index(int(np.argmax(image)), image.shape)
    assert abs(peak[0] - float(rows)) <= 4
    assert abs(peak[1] - float(cols)) <= 4
    # The crop covers original rows 111.4 .. 913.3.
    flat = np.ones((7, 7), np.float32)
    flat[6, 0] = 0.0
    covered = cam_to_image(flat, geometry)
    assert not covered[:111].any()
    assert not covered[914:].any()
    assert (covered[112:913, 400] > 0).all()
    smaller = cam_to_image(cam, geometry, out_shape=(512, 400))
    assert smaller.shape == (512, 400)
    assert np.unravel_index(int(np.argmax(smaller)), smaller.shape) == pytest.approx(
        (peak[0] / 2, peak[1] / 2), abs=3
    )


def test_cam_to_image_refuses_stacks() -> None:
    with pytest.raises(ValueError, match="one"):
        cam_to_image(np.zeros((2, 7, 7), np.float32), _identity_geometry(14))


# -- ImageCam: the same map, read only where asked ---------------------------------------------

GEOMETRIES = [
    CropGeometry((1024, 1024), (224, 224), (0, 0), 224),  # the square DX of the assets
    CropGeometry((1024, 800), (286, 224), (31, 0), 224),  # portrait, cropped top and bottom
    CropGeometry((100, 200), (224, 448), (0, 112), 224),  # landscape, zero outside the crop
    CropGeometry((3000, 2500), (268, 224), (22, 0), 224),  # larger than one block of rows
]


def _cams(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cams = [rng.standard_normal((7, 7)).astype(np.float32) for _ in range(6)]
    corner = np.zeros((7, 7), np.float32)
    corner[0, 0] = 1.0  # the peak on the held edge: a plateau, first pixel wins
    plateau = np.zeros((7, 7), np.float32)
    plateau[2:5, 2:5] = 1.0  # many equal maxima
    return [*cams, corner, plateau, np.eye(5, dtype=np.float32)]


def _one_product(cam: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """The map as cam_to_image made it before ImageCam: one whole-image matrix product."""
    rows, cols = geometry.original_shape
    row_weights, _ = _axis(
        rows,
        rows,
        geometry.resized_shape[0],
        geometry.crop_origin[0],
        geometry.crop_size,
        cam.shape[0],
    )
    col_weights, _ = _axis(
        cols,
        cols,
        geometry.resized_shape[1],
        geometry.crop_origin[1],
        geometry.crop_size,
        cam.shape[1],
    )
    image = row_weights @ normalise_map(cam).astype(np.float64) @ col_weights.T
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.original_shape}")
def test_image_cam_is_the_whole_map_piece_by_piece(geometry: CropGeometry) -> None:
    for cam in _cams(seed=geometry.original_shape[1]):
        reference = _one_product(cam, geometry)
        image_cam = ImageCam.of(cam, geometry)
        assert image_cam.shape == reference.shape
        np.testing.assert_array_equal(image_cam.full(), reference)
        np.testing.assert_array_equal(cam_to_image(cam, geometry), reference)
        for rows, cols in [
            (slice(0, None, 8), slice(0, None, 8)),
            (slice(3, 70), slice(None)),
            (slice(None), slice(reference.shape[1] - 9, None)),
        ]:
            np.testing.assert_array_equal(image_cam.sample(rows, cols), reference[rows, cols])


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g.original_shape}")
def test_image_cam_extrema_are_the_whole_maps(geometry: CropGeometry) -> None:
    for cam in _cams(seed=geometry.original_shape[0]):
        reference = _one_product(cam, geometry)
        low, high, peak = ImageCam.of(cam, geometry).extrema()
        assert low == float(reference.min())
        assert high == float(reference.max())
        row, col = np.unravel_index(int(np.argmax(reference)), reference.shape)
        assert peak == (int(row), int(col))


def test_image_cam_of_a_constant_map_is_zero() -> None:
    image_cam = ImageCam.of(np.full((7, 7), 2.0, np.float32), GEOMETRIES[0])
    assert image_cam.extrema() == (0.0, 0.0, (0, 0))
    assert not image_cam.full().any()
