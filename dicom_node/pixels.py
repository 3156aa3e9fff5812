"""Decode a stored greyscale radiograph to the 8-bit display image every model reads.

Shared by the workers (``workers.imaging``) and the API's interactive grounding and viewer, so an
image is windowed the same way wherever it is shown or analysed. Decoding covers every transfer
syntax pydicom can decode with the pylibjpeg and gdcm plugins.

Integer pixels of up to 16 bits, every radiograph in practice, are mapped through a table: the
arithmetic (modality LUT, VOI LUT or window, scaling, inversion) runs once per possible stored
value, not once per pixel, and the image is one lookup; the range of an image without a window
comes from its histogram. The result is the same, byte for byte, as the arithmetic over every
pixel, which other pixel data (floating point, 32-bit) still takes. A 2048² 12-bit image took
36 to 74 ms the old way on the development VM, and 12 to 27 the new (docs/PERFORMANCE.md).
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing

from radlight.errors import NotAnalysableError

PERCENTILES = (0.5, 99.5)  # an image without a window is scaled between these


def to_display_uint8(ds: Dataset) -> NDArray[np.uint8]:
    """Decode, apply modality and VOI LUTs, invert MONOCHROME1, scale to 0..255."""
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
        raise NotAnalysableError(f"the pixel data cannot be decoded: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotAnalysableError(f"photometric interpretation {photometric} is not greyscale")
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        return _display_by_table(pixels, ds, photometric)
    return display_by_arithmetic(pixels, ds, photometric)


class _Image:
    """The image's values as the windowing sees them: each pixel once (the default), or each
    possible stored value once, with ``present`` selecting the codes whose values bound those
    of the image and ``counts`` how many pixels hold each code (for its percentiles)."""

    def __init__(
        self, present: NDArray[Any] | None = None, counts: NDArray[np.intp] | None = None
    ) -> None:
        self.present = present
        self.counts = counts

    def shown(self, values: NDArray[Any]) -> NDArray[Any]:
        """Values whose smallest and largest are the image's."""
        return values if self.present is None else values[self.present]

    def percentiles(self, values: NDArray[Any]) -> tuple[float, ...]:
        if self.present is None:
            return tuple(float(v) for v in np.percentile(values, PERCENTILES))
        if self.counts is None:
            raise RuntimeError("percentiles need the image's histogram")
        return _percentiles(values, self.counts, PERCENTILES)


def _display_values(
    stored: NDArray[Any], ds: Dataset, image: _Image
) -> tuple[NDArray[np.float32], float, float]:
    """The values of ``stored`` (the pixels, or every possible stored value) after the modality
    and VOI LUTs, as float32, and the values shown black and white."""
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if bits_stored <= 8 and not has_voi and "ModalityLUTSequence" not in ds:
        return stored.astype(np.float32), 0.0, float(2**bits_stored - 1)
    # pydicom reads the LUT and window attributes as it applies them; a broken one (a LUT
    # without its descriptor or data, a window of width 0) is the image's fault, said plainly.
    try:
        values = apply_modality_lut(stored, ds)
        if has_voi:
            values = apply_voi_lut(values, ds, index=0)
        window = None if not has_voi or ds.get("VOILUTSequence") else _window_range(ds)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise NotAnalysableError(
            f"the image's modality or VOI LUT cannot be applied: {exc}"
        ) from exc
    if has_voi:
        shown = image.shown(values)
        low, high = window or (float(np.min(shown)), float(np.max(shown)))
    else:
        low, high = image.percentiles(values)
    return np.asarray(values, dtype=np.float32), low, high


def _scaled(
    values: NDArray[np.float32], low: float, high: float, photometric: str, image: _Image
) -> NDArray[np.uint8]:
    shown = image.shown(values)
    if high <= low or float(np.min(shown)) == float(np.max(shown)):
        raise NotAnalysableError("the image has no contrast (constant pixel values)")
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    display: NDArray[np.uint8] = np.round(scaled * 255.0).astype(np.uint8)
    return display


def display_by_arithmetic(pixels: NDArray[Any], ds: Dataset, photometric: str) -> NDArray[np.uint8]:
    """The display image computed pixel by pixel: the definition :func:`_display_by_table`
    follows, and the way for pixel data it cannot take."""
    image = _Image()
    values, low, high = _display_values(pixels, ds, image)
    return _scaled(values, low, high, photometric, image)


def _display_by_table(
    pixels: NDArray[np.integer], ds: Dataset, photometric: str
) -> NDArray[np.uint8]:
    """:func:`display_by_arithmetic`'s image, computed for each possible stored value once and
    looked up: the same operations on the same types, element by element, so the same bytes.

    The codes are the pixels' bit patterns read as unsigned (a signed image's negative values
    too), which index the histogram and the table. The histogram is made only where it is
    needed: without LUT sequences every step is monotonic (a rescale, a LINEAR, LINEAR_EXACT or
    SIGMOID window, the scaling), so the values of the smallest and largest stored value bound
    the image's, and with a window or 8 bits no percentile is taken."""
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    size = 1 << (8 * pixels.dtype.itemsize)
    stored = np.arange(size, dtype=unsigned.dtype).view(pixels.dtype)  # code -> value
    monotonic = "ModalityLUTSequence" not in ds and "VOILUTSequence" not in ds
    no_percentiles = "WindowCenter" in ds or int(ds.get("BitsStored", 8) or 8) <= 8
    if monotonic and no_percentiles:
        extremes = np.array([pixels.min(), pixels.max()], dtype=pixels.dtype)
        image = _Image(present=extremes.view(unsigned.dtype).astype(np.intp))
    else:
        counts = np.bincount(unsigned.ravel(), minlength=size)
        image = _Image(present=counts > 0, counts=counts)
    values, low, high = _display_values(stored, ds, image)
    lookup = _scaled(values, low, high, photometric, image)
    display: NDArray[np.uint8] = np.take(lookup, unsigned)
    return display


def _percentiles(
    values: NDArray[Any], counts: NDArray[np.intp], percentiles: tuple[float, ...]
) -> tuple[float, ...]:
    """``np.percentile`` (linear) of the image whose value ``values[c]`` occurs ``counts[c]``
    times, without the image: numpy's order statistics and its interpolation between them."""
    order = np.argsort(values, kind="stable")
    order = order[counts[order] > 0]
    ends = np.cumsum(counts[order])  # the sorted image's value at i is values[order[k]], k the
    total = int(ends[-1])  # first with ends[k] > i
    quantiles = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    positions = (total - 1) * quantiles  # as numpy's "linear" method: (n - 1) * q
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, total - 1)
    weights = positions - below
    results = []
    for low_index, high_index, weight in zip(below, above, weights, strict=True):
        pair = values[order[np.searchsorted(ends, [low_index, high_index], side="right")]]
        # numpy interpolates between the two neighbours exactly as for this pair at ``weight``.
        results.append(float(np.quantile(pair, weight)))
    return tuple(results)


def _window_range(ds: Dataset) -> tuple[float, float] | None:
    """Black and white of the first VOI window: what pydicom's windowing makes of values far
    below and far above it (LINEAR, LINEAR_EXACT and SIGMOID alike), or None without a window."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    with np.errstate(over="ignore"):  # SIGMOID: exp() of a huge value is inf, as intended
        black, white = apply_windowing(np.array([-1e12, 1e12]), ds, index=0)
    return float(black), float(white)
