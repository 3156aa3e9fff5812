"""Class activation maps (Zhou et al. 2016): classifier weights times the last feature map.

For a head ``logit = W @ mean_hw(features) + b`` the map of label ``l`` is ``W[l] @ features``:
one matmul, no gradients. Adding ``b`` to every cell (``bias=``) makes each map's spatial mean
equal its logit. :func:`cam_to_image` puts one map back onto the original image for display;
:class:`ImageCam` is the same map evaluated only where it is needed.
"""

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.preprocess import CropGeometry

FloatArray = npt.NDArray[np.float32]


def class_activation_maps(
    features: npt.NDArray[np.floating],
    weights: npt.NDArray[np.floating],
    *,
    bias: npt.NDArray[np.floating] | None = None,
) -> FloatArray:
    """``[C, h, w]`` or ``[N, C, h, w]`` features and ``[L, C]`` weights -> ``[..., L, h, w]`` maps."""
    if features.ndim not in (3, 4):
        raise ValueError(f"features must be [C, h, w] or [N, C, h, w], got {features.shape}")
    if weights.ndim != 2 or weights.shape[1] != features.shape[-3]:
        raise ValueError(f"weights {weights.shape} do not match {features.shape[-3]} channels")
    *lead, channels, rows, cols = features.shape
    flat = features.reshape(*lead, channels, rows * cols).astype(np.float32, copy=False)
    maps = np.matmul(weights.astype(np.float32, copy=False), flat)
    if bias is not None:
        if bias.shape != (weights.shape[0],):
            raise ValueError(f"bias {bias.shape} does not match {weights.shape[0]} labels")
        maps = maps + bias.astype(np.float32)[:, np.newaxis]
    result: FloatArray = maps.reshape(*lead, weights.shape[0], rows, cols).astype(np.float32)
    return result


def normalise_map(cam: npt.NDArray[np.floating]) -> FloatArray:
    """Min-max to [0, 1]; a constant map (no localisation at all) becomes all zeros."""
    if not np.isfinite(cam).all():
        raise ValueError("activation map holds NaN or infinity")
    low, high = float(cam.min()), float(cam.max())
    if high - low <= 0.0:
        return np.zeros(cam.shape, dtype=np.float32)
    return ((cam.astype(np.float64) - low) / (high - low)).astype(np.float32)


def cam_to_image(
    cam: npt.NDArray[np.floating],
    geometry: CropGeometry,
    out_shape: tuple[int, int] | None = None,
) -> FloatArray:
    """One ``[h, w]`` map -> float32 ``[H, W]`` in [0, 1] over the original image.

    The map is min-max normalised, then bilinearly interpolated (half-pixel centres, edges held,
    like ``align_corners=False``) over the centre-crop region; pixels outside the crop are 0.
    ``out_shape`` defaults to the original image's shape; another shape is a rescaled view of it.
    """
    return ImageCam.of(cam, geometry, out_shape).full()


# Values of the full-size map computed per matrix product. 256 KiB of float64 stays in cache, and
# a product that small stays on one OpenBLAS thread: one split across threads waits for a
# scheduler tick when the cores are busy (a 1024 x 7 x 1024 product took 16 ms instead of 0.9 ms on
# the shared 2-core VM; 32-row blocks, 0.4 ms in all).
_BLOCK_VALUES = 32768


@dataclass(frozen=True, eq=False)
class ImageCam:
    """One CAM over the original image, evaluated only where it is asked for.

    ``cam_to_image`` is ``ImageCam.of(...).full()``; :meth:`sample` gives any rows and columns of
    that same map for the cost of their pixels alone, so a region can be found on a coarse grid and
    a few bands of pixels instead of the whole image (``workers.results.regions``), and the full
    map is made only for the findings that are drawn.
    """

    left: npt.NDArray[np.float64]  # [rows, h]: the row weights times the normalised map
    col_weights: npt.NDArray[np.float64]  # [cols, w]
    row_candidates: npt.NDArray[np.intp]  # rows where the map's extrema can lie
    col_candidates: npt.NDArray[np.intp]

    @classmethod
    def of(
        cls,
        cam: npt.NDArray[np.floating],
        geometry: CropGeometry,
        out_shape: tuple[int, int] | None = None,
    ) -> "ImageCam":
        """See :func:`cam_to_image` for what the map is."""
        if cam.ndim != 2:
            raise ValueError(f"expected one [h, w] map, got shape {cam.shape}")
        rows, cols = out_shape if out_shape is not None else geometry.original_shape
        if rows < 1 or cols < 1:
            raise ValueError(f"invalid output shape {(rows, cols)}")
        normalised = normalise_map(cam).astype(np.float64)
        row_weights, row_candidates = _axis(
            rows,
            geometry.original_shape[0],
            geometry.resized_shape[0],
            geometry.crop_origin[0],
            geometry.crop_size,
            cam.shape[0],
        )
        col_weights, col_candidates = _axis(
            cols,
            geometry.original_shape[1],
            geometry.resized_shape[1],
            geometry.crop_origin[1],
            geometry.crop_size,
            cam.shape[1],
        )
        return cls(row_weights @ normalised, col_weights, row_candidates, col_candidates)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.col_weights.shape[0])

    def sample(
        self, rows: slice | npt.NDArray[np.intp], cols: slice | npt.NDArray[np.intp]
    ) -> FloatArray:
        """``full()[rows][:, cols]``, computing only those pixels."""
        return _unit_float32(self.left[rows] @ self.col_weights[cols].T)

    def full(self) -> FloatArray:
        """The whole map, float32 ``[H, W]`` in [0, 1], made in blocks of rows."""
        rows, cols = self.shape
        image = np.zeros((rows, cols), dtype=np.float32)
        # Pixels outside the centre crop have no weight: exactly 0, left out of the products.
        top, bottom = _nonzero_span(self.left)
        first, last = _nonzero_span(self.col_weights)
        right = np.ascontiguousarray(self.col_weights[first:last].T)
        step = max(1, _BLOCK_VALUES // max(1, last - first))
        for start in range(top, bottom, step):
            stop = min(start + step, bottom)
            image[start:stop, first:last] = self.left[start:stop] @ right
        # Clipping after the cast to float32 gives the same values (0 and 1 are exact in both).
        np.maximum(image, 0.0, out=image)
        np.minimum(image, 1.0, out=image)
        return image

    def extrema(self) -> tuple[float, float, tuple[int, int]]:
        """``(min, max, (row, column) of the first max in row-major order)`` of :meth:`full`.

        Within a run of pixels between the same two cells the map is linear along each axis, so
        its extremes lie at the runs' first and last pixels: a grid of those few rows and columns
        holds them.
        """
        grid = self.sample(self.row_candidates, self.col_candidates)
        row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
        peak = (int(self.row_candidates[row]), int(self.col_candidates[col]))
        return float(grid.min()), float(grid.max()), peak


def _nonzero_span(weights: npt.NDArray[np.float64]) -> tuple[int, int]:
    """``(first, stop)``: the rows of ``weights`` from its first to its last non-zero row."""
    nonzero = np.flatnonzero(weights.any(axis=1))
    if nonzero.size == 0:
        return 0, 0
    return int(nonzero[0]), int(nonzero[-1]) + 1


def _unit_float32(values: npt.NDArray[np.float64]) -> FloatArray:
    """Clip to [0, 1] in place (np.clip is several times slower on float64) and cast."""
    np.maximum(values, 0.0, out=values)
    np.minimum(values, 1.0, out=values)
    return values.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _axis(
    out_len: int, original_len: int, resized_len: int, offset: int, crop: int, cells: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """``[out_len, cells]`` bilinear weights along one axis (rows outside the crop are zero), and
    the first and last index of every run of pixels that interpolate between the same cells."""
    centres = (np.arange(out_len) + 0.5) * (original_len / out_len)
    in_crop = centres * (resized_len / original_len) - offset
    inside = (in_crop >= 0.0) & (in_crop < crop)
    position = np.clip(in_crop * (cells / crop) - 0.5, 0.0, cells - 1)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, cells - 1)
    fraction = position - lower
    weights = np.zeros((out_len, cells), dtype=np.float64)
    index = np.arange(out_len)
    np.add.at(weights, (index, lower), 1.0 - fraction)
    np.add.at(weights, (index, upper), fraction)
    weights[~inside] = 0.0
    segment = np.where(inside, lower, -1)
    change = np.flatnonzero(segment[1:] != segment[:-1])
    ends = np.unique(np.concatenate(([0, out_len - 1], change, change + 1))).astype(np.intp)
    # Cached (every finding of an image has the same geometry), so shared: read-only.
    weights.setflags(write=False)
    ends.setflags(write=False)
    return weights, ends
