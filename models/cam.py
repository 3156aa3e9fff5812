"""Class activation maps (Zhou et al. 2016): classifier weights times the last feature map.

For a head ``logit = W @ mean_hw(features) + b`` the map of label ``l`` is ``W[l] @ features``:
one matmul, no gradients. Adding ``b`` to every cell (``bias=``) makes each map's spatial mean
equal its logit. :func:`cam_to_image` puts one map back onto the original image for display.
"""

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
    if cam.ndim != 2:
        raise ValueError(f"expected one [h, w] map, got shape {cam.shape}")
    rows, cols = out_shape if out_shape is not None else geometry.original_shape
    if rows < 1 or cols < 1:
        raise ValueError(f"invalid output shape {(rows, cols)}")
    normalised = normalise_map(cam).astype(np.float64)
    row_weights = _axis_weights(
        rows,
        geometry.original_shape[0],
        geometry.resized_shape[0],
        geometry.crop_origin[0],
        geometry.crop_size,
        cam.shape[0],
    )
    col_weights = _axis_weights(
        cols,
        geometry.original_shape[1],
        geometry.resized_shape[1],
        geometry.crop_origin[1],
        geometry.crop_size,
        cam.shape[1],
    )
    image = row_weights @ normalised @ col_weights.T
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _axis_weights(
    out_len: int, original_len: int, resized_len: int, offset: int, crop: int, cells: int
) -> npt.NDArray[np.float64]:
    """``[out_len, cells]`` bilinear weights along one axis; rows outside the crop are zero."""
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
    return weights
