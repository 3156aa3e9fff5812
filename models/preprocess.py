"""Display image -> model input tensor, exactly as CheXNet was trained, plus the way back.

CheXNet's torchvision pipeline is ``Resize(short side) -> CenterCrop -> ToTensor -> Normalize`` on
a PIL image. It is reproduced here without torchvision: PIL bilinear resize of the short side (with
torchvision's size arithmetic, which truncates the long side), torchvision's centre-crop offsets
(``round`` of half the margin), ``/255``, gray copied to R, G and B, then ImageNet mean/std.
Decoding DICOM and windowing happen before this, elsewhere; this module sees only pixels.

Accepted inputs are 2-D ``uint8`` (0..255, resized as 8-bit, as training images were) or floating
point in [0, 1] (resized in 32-bit float, with no 8-bit rounding), MONOCHROME2 (bright = dense).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.card import Preprocessing

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CropGeometry:
    """Where the model's square input sits in the original image.

    Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), rows first.
    """

    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    crop_origin: tuple[int, int]
    crop_size: int

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per resized pixel along (rows, columns)."""
        return (
            self.original_shape[0] / self.resized_shape[0],
            self.original_shape[1] / self.resized_shape[1],
        )

    def crop_box(self) -> tuple[float, float, float, float]:
        """The crop as (top, left, bottom, right) in original pixel coordinates."""
        (top, left), (row_scale, col_scale) = self.crop_origin, self.scale
        return (
            top * row_scale,
            left * col_scale,
            (top + self.crop_size) * row_scale,
            (left + self.crop_size) * col_scale,
        )

    def to_original(
        self, rows: npt.ArrayLike, cols: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Model-input coordinates (0..crop_size) -> original image coordinates."""
        row_scale, col_scale = self.scale
        return (
            (np.asarray(rows, dtype=np.float64) + self.crop_origin[0]) * row_scale,
            (np.asarray(cols, dtype=np.float64) + self.crop_origin[1]) * col_scale,
        )


@dataclass(frozen=True)
class PreparedImage:
    """The model input ``[3, S, S]`` float32 and how it maps back onto the original image."""

    tensor: FloatArray
    geometry: CropGeometry


def resized_shape(shape: tuple[int, int], short_side: int) -> tuple[int, int]:
    """torchvision ``Resize(int)`` output size: short side to ``short_side``, long side truncated."""
    rows, cols = shape
    if rows <= cols:
        return short_side, int(short_side * cols / rows)
    return int(short_side * rows / cols), short_side


def prepare_image(gray: npt.NDArray[np.generic], preprocessing: Preprocessing) -> PreparedImage:
    """Resize, centre-crop, replicate to RGB and normalise one windowed grayscale image."""
    image = _as_pil(gray)
    rows, cols = gray.shape
    new_rows, new_cols = resized_shape((rows, cols), preprocessing.resize_short_side)
    resized = image.resize((new_cols, new_rows), Image.Resampling.BILINEAR)
    size = preprocessing.input_size
    top = round((new_rows - size) / 2.0)  # torchvision: round half to even
    left = round((new_cols - size) / 2.0)
    plane = np.asarray(resized, dtype=np.float32)[top : top + size, left : left + size]
    if gray.dtype == np.uint8:
        plane = plane / np.float32(255.0)
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(3, 1, 1)
    tensor = ((plane[np.newaxis] - mean) / std).astype(np.float32)
    geometry = CropGeometry(
        original_shape=(rows, cols),
        resized_shape=(new_rows, new_cols),
        crop_origin=(top, left),
        crop_size=size,
    )
    return PreparedImage(tensor=tensor, geometry=geometry)


def prepare_batch(
    images: Sequence[npt.NDArray[np.generic]], preprocessing: Preprocessing
) -> tuple[FloatArray, tuple[CropGeometry, ...]]:
    """:func:`prepare_image` for each image, stacked into ``[N, 3, S, S]``."""
    if not images:
        raise ValueError("no images to prepare")
    prepared = [prepare_image(image, preprocessing) for image in images]
    batch = np.stack([item.tensor for item in prepared])
    return batch, tuple(item.geometry for item in prepared)


def _as_pil(gray: npt.NDArray[np.generic]) -> Image.Image:
    """Validate a display image and wrap it for PIL: mode L for uint8, mode F for floats."""
    if not isinstance(gray, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(gray).__name__}")
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"expected a non-empty 2-D grayscale image, got shape {gray.shape}")
    if gray.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(gray))
    if np.issubdtype(gray.dtype, np.floating):
        values = np.ascontiguousarray(gray, dtype=np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise ValueError("a floating-point display image must be finite and within [0, 1]")
        return Image.fromarray(values)
    raise ValueError(f"expected uint8 or floating-point pixels, got {gray.dtype}")
