"""PNG previews of result objects, for the API and the dashboard.

A Secondary Capture is shown as it is (RGB, or grey scaled to its range); a fractional SEG as the
highest probability of any segment per pixel. SR and GSPS objects hold no pixels to show.
"""

from io import BytesIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from db.models import ResultKind

IMAGE_KINDS = (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC, ResultKind.GROUNDED_SC)
PREVIEW_KINDS = (*IMAGE_KINDS, ResultKind.PROBABILITY_SEG)


def _to_uint8(pixels: NDArray[np.generic]) -> NDArray[np.uint8]:
    """Scale to 0-255 over the array's own range (a constant image becomes black)."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8)


def render_preview(data: bytes, kind: ResultKind, max_size: int) -> bytes:
    """A PNG of a result: a Secondary Capture as it is (RGB, or grey scaled to its range), a
    probability SEG as the highest probability of any segment per pixel. ValueError when the
    object holds no pixels to show or cannot be decoded."""
    if kind not in PREVIEW_KINDS:
        raise ValueError(f"a {kind.value} result has no pixel data to preview")
    try:
        ds = dcmread(BytesIO(data))
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, EOFError) as exc:
        raise ValueError(f"the stored object's pixels cannot be decoded: {exc}") from exc
    if kind is ResultKind.PROBABILITY_SEG:
        # Frames are (segment, plane) pairs of one image here; values are 0..MaximumFractionalValue.
        stack = pixels if pixels.ndim == 3 else pixels[np.newaxis]
        maximum = float(ds.get("MaximumFractionalValue", 255)) or 255.0
        image = Image.fromarray(
            np.clip(stack.max(axis=0) / maximum * 255, 0, 255).round().astype(np.uint8)
        )
    elif str(ds.get("PhotometricInterpretation", "")) in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        # pydicom returns RGB for the YBR encodings of JPEG baseline copies.
        image = Image.fromarray((pixels if pixels.ndim == 3 else pixels[0]).astype(np.uint8))
    else:
        grey = _to_uint8(pixels if pixels.ndim == 2 else pixels[0])
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey)
    image.thumbnail((max_size, max_size))
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
