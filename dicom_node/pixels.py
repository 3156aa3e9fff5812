"""Decode a stored greyscale radiograph to the 8-bit display image every model reads.

Shared by the workers (``workers.imaging``) and the API's interactive grounding and viewer, so an
image is windowed the same way wherever it is shown or analysed. Decoding covers every transfer
syntax pydicom can decode with the pylibjpeg and gdcm plugins.
"""

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing

from radlight.errors import NotAnalysableError


def to_display_uint8(ds: Dataset) -> NDArray[np.uint8]:
    """Decode, apply modality and VOI LUTs, invert MONOCHROME1, scale to 0..255."""
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
        raise NotAnalysableError(f"the pixel data cannot be decoded: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotAnalysableError(f"photometric interpretation {photometric} is not greyscale")
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if bits_stored <= 8 and not has_voi and "ModalityLUTSequence" not in ds:
        image = pixels.astype(np.float32)
        low, high = 0.0, float(2**bits_stored - 1)
    else:
        values = apply_modality_lut(pixels, ds)
        if has_voi:
            values = apply_voi_lut(values, ds, index=0)
            window = None if ds.get("VOILUTSequence") else _window_range(ds)
            low, high = window or (float(np.min(values)), float(np.max(values)))
        else:
            low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
        image = np.asarray(values, dtype=np.float32)
    if high <= low or float(np.min(image)) == float(np.max(image)):
        raise NotAnalysableError("the image has no contrast (constant pixel values)")
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    display: NDArray[np.uint8] = np.round(scaled * 255.0).astype(np.uint8)
    return display


def _window_range(ds: Dataset) -> tuple[float, float] | None:
    """Black and white of the first VOI window: what pydicom's windowing makes of values far
    below and far above it (LINEAR, LINEAR_EXACT and SIGMOID alike), or None without a window."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    with np.errstate(over="ignore"):  # SIGMOID: exp() of a huge value is inf, as intended
        black, white = apply_windowing(np.array([-1e12, 1e12]), ds, index=0)
    return float(black), float(white)
