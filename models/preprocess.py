"""Display image -> model input tensor, exactly as CheXNet was trained, plus the way back.

CheXNet's torchvision pipeline is ``Resize(short side) -> CenterCrop -> ToTensor -> Normalize`` on
a PIL image. It is reproduced here without torchvision: PIL bilinear resize of the short side (with
torchvision's size arithmetic, which truncates the long side), torchvision's centre-crop offsets
(``round`` of half the margin), ``/255``, gray copied to R, G and B, then ImageNet mean/std.
Decoding DICOM and windowing happen before this, elsewhere; this module sees only pixels.

Preprocessing kind ``keras-xception-nhwc`` (the pneumonia demo) is Keras' instead: the whole
image NEAREST-resized to a square, ``x / 127.5 - 1``, NHWC; see :func:`prepare_keras_xception`.

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
    """The model input (``[3, S, S]`` float32, or ``[S, S, 3]`` for an NHWC kind) and how it maps
    back onto the original image."""

    tensor: FloatArray
    geometry: CropGeometry


def resized_shape(shape: tuple[int, int], short_side: int) -> tuple[int, int]:
    """torchvision ``Resize(int)`` output size: short side to ``short_side``, long side truncated."""
    rows, cols = shape
    if rows <= cols:
        return short_side, int(short_side * cols / rows)
    return int(short_side * rows / cols), short_side


# Tensor layout each preprocessing kind produces (the model's input must match it).
INPUT_LAYOUTS: dict[str, str] = {
    "chexnet": "nchw",
    "keras-xception-nhwc": "nhwc",
    "xrv-gray": "nchw",
}


def prepare_image(gray: npt.NDArray[np.generic], preprocessing: Preprocessing) -> PreparedImage:
    """Resize, centre-crop, replicate to RGB and normalise one windowed grayscale image."""
    if preprocessing.kind == "keras-xception-nhwc":
        return prepare_keras_xception(gray, preprocessing.input_size)
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
    if preprocessing.channels == "gray":  # xrv-gray: one plane, [1, S, S]
        mean, std = mean[:1], std[:1]
    tensor = ((plane[np.newaxis] - mean) / std).astype(np.float32)
    geometry = CropGeometry(
        original_shape=(rows, cols),
        resized_shape=(new_rows, new_cols),
        crop_origin=(top, left),
        crop_size=size,
    )
    return PreparedImage(tensor=tensor, geometry=geometry)


def prepare_keras_xception(gray: npt.NDArray[np.generic], size: int) -> PreparedImage:
    """Keras ``load_img`` + ``xception.preprocess_input``: ``[S, S, 3]`` NHWC in [-1, 1].

    The whole image is resized to ``size`` x ``size`` with NEAREST (no aspect keep, no crop), as
    the pneumonia demo was trained. For a uint8 image this equals PIL's ``convert("RGB")`` then
    resize (NEAREST picks the same source pixel in every channel), so a DICOM holding a JPEG's
    8-bit values gives the same tensor as the JPEG. A float image in [0, 1] is scaled to 0..255
    first, without rounding.
    """
    image = _as_pil(gray)
    rows, cols = gray.shape
    resized = image.resize((size, size), Image.Resampling.NEAREST)
    plane = np.asarray(resized, dtype=np.float32)
    if gray.dtype != np.uint8:
        plane = plane * np.float32(255.0)
    plane = plane / np.float32(127.5) - np.float32(1.0)
    tensor = np.ascontiguousarray(np.repeat(plane[:, :, np.newaxis], 3, axis=2), dtype=np.float32)
    geometry = CropGeometry(
        original_shape=(rows, cols), resized_shape=(size, size), crop_origin=(0, 0), crop_size=size
    )
    return PreparedImage(tensor=tensor, geometry=geometry)


def prepare_batch(
    images: Sequence[npt.NDArray[np.generic]], preprocessing: Preprocessing
) -> tuple[FloatArray, tuple[CropGeometry, ...]]:
    """:func:`prepare_image` for each image, stacked into ``[N, 3, S, S]`` (or ``[N, S, S, 3]``)."""
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
