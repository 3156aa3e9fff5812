"""The display image made through a table of stored values is the one made pixel by pixel.

``to_display_uint8`` maps integer pixels through a table computed once per possible stored value
(dicom_node.pixels); ``display_by_arithmetic`` is the definition it follows. Every case here
compares the two byte for byte, or checks that both refuse the image with the same reason: the
real NIH radiographs, and synthetic images for what they lack (12 and 16 bits, signed values,
rescales, windows of each VOI LUT function, VOI and modality LUT sequences, MONOCHROME1).
"""

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicom_node.pixels import PERCENTILES, _percentiles, display_by_arithmetic, to_display_uint8
from radlight.errors import NotAnalysableError
from tests.workers.test_imaging import ramp, synthetic

RNG = np.random.default_rng(20261207)


def by_arithmetic(ds: Dataset) -> NDArray[np.uint8]:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    return display_by_arithmetic(ds.pixel_array, ds, photometric)


def assert_same_display(ds: Dataset) -> None:
    expected = by_arithmetic(ds)
    made = to_display_uint8(ds)
    assert made.dtype == np.uint8
    assert made.shape == expected.shape
    np.testing.assert_array_equal(made, expected)


def lut_sequence(first: int, table: NDArray[np.integer], bits: int = 16) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    item.LUTData = [int(v) for v in table]
    return item


def noise(low: int, high: int, shape: tuple[int, int] = (96, 80)) -> NDArray[np.int64]:
    """A radiograph-like spread: a smooth ramp with noise, clipped to ``low..high``."""
    base = np.linspace(low, high, shape[0] * shape[1]).reshape(shape)
    spread = RNG.normal(0.0, (high - low) / 12, shape)
    return np.clip(np.rint(base + spread), low, high).astype(np.int64)


@pytest.fixture(scope="module")
def originals(real_dicom_files: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


@pytest.mark.parametrize("index", [0, 1], ids=["nih_google", "nih_nhsx"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_real_radiographs(originals: list[Dataset], index: int, photometric: str) -> None:
    ds = copy.deepcopy(originals[index])
    ds.PhotometricInterpretation = photometric
    assert_same_display(ds)


@pytest.mark.parametrize("index", [0, 1], ids=["nih_google", "nih_nhsx"])
def test_real_radiographs_as_12_bit_without_a_window(originals: list[Dataset], index: int) -> None:
    """Scaled between the 0.5th and 99.5th percentiles, here taken from the histogram."""
    pixels = originals[index].pixel_array.astype(np.int64) * 16 + RNG.integers(0, 16, (1, 1))
    assert_same_display(synthetic(pixels, bits_stored=12))


CASES: dict[str, Callable[[], Dataset]] = {
    "8-bit with a window": lambda: synthetic(
        noise(0, 255), bits_stored=8, WindowCenter=100, WindowWidth=80
    ),
    "12-bit, percentiles": lambda: synthetic(noise(0, 4095), bits_stored=12),
    "12-bit LINEAR window": lambda: synthetic(
        noise(0, 4095), bits_stored=12, WindowCenter=2000, WindowWidth=1000
    ),
    "12-bit LINEAR_EXACT window": lambda: synthetic(
        noise(0, 4095),
        bits_stored=12,
        WindowCenter=1800.5,
        WindowWidth=1301,
        VOILUTFunction="LINEAR_EXACT",
    ),
    "12-bit SIGMOID window": lambda: synthetic(
        noise(0, 4095),
        bits_stored=12,
        WindowCenter=2100,
        WindowWidth=900,
        VOILUTFunction="SIGMOID",
    ),
    "12-bit window, MONOCHROME1": lambda: synthetic(
        noise(0, 4095),
        bits_stored=12,
        WindowCenter=2000,
        WindowWidth=1000,
        photometric="MONOCHROME1",
    ),
    "signed 16-bit, fractional rescale, window": lambda: synthetic(
        noise(-1024, 3071),
        bits_stored=16,
        signed=True,
        RescaleSlope=0.5,
        RescaleIntercept=-100.25,
        WindowCenter=300,
        WindowWidth=700,
    ),
    "signed 16-bit, rescale, percentiles": lambda: synthetic(
        noise(-2000, 2500), bits_stored=16, signed=True, RescaleSlope=2, RescaleIntercept=7
    ),
    "signed 16-bit, negative slope, percentiles": lambda: synthetic(
        noise(-500, 1500), bits_stored=16, signed=True, RescaleSlope=-1.5, RescaleIntercept=3
    ),
    "16-bit full range, percentiles": lambda: synthetic(noise(0, 65535), bits_stored=16),
    "16-bit two values": lambda: synthetic(
        np.where(RNG.random((64, 64)) < 0.3, 40_000, 9), bits_stored=16
    ),
    "12-bit VOI LUT sequence": lambda: synthetic(
        noise(0, 4095),
        bits_stored=12,
        VOILUTSequence=[lut_sequence(500, (np.sqrt(np.arange(3000)) * 40).astype(int))],
    ),
    "12-bit modality LUT sequence": lambda: synthetic(
        noise(0, 4095),
        bits_stored=12,
        ModalityLUTSequence=[lut_sequence(100, (np.arange(3800) * 3 // 2 + 50), bits=16)],
    ),
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_synthetic_images(make: Callable[[], Dataset]) -> None:
    assert_same_display(make())


REFUSED: dict[str, Callable[[], Dataset]] = {
    "constant 12-bit": lambda: synthetic(np.full((64, 64), 1234), bits_stored=12),
    "constant 8-bit": lambda: synthetic(np.full((64, 64), 7), bits_stored=8),
    "entirely below its window": lambda: synthetic(
        ramp(0, 900), bits_stored=12, WindowCenter=3000, WindowWidth=200
    ),
}


@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
def test_images_without_contrast_are_refused_alike(make: Callable[[], Dataset]) -> None:
    ds = make()
    with pytest.raises(NotAnalysableError) as by_pixel:
        by_arithmetic(ds)
    with pytest.raises(NotAnalysableError) as by_table:
        to_display_uint8(ds)
    assert str(by_table.value) == str(by_pixel.value)
    assert "no contrast" in str(by_table.value)


BROKEN: dict[str, Callable[[], Dataset]] = {
    "modality LUT item without a descriptor": lambda: synthetic(
        noise(0, 4095), bits_stored=12, ModalityLUTSequence=[Dataset()]
    ),
    "window of width 0": lambda: synthetic(
        noise(0, 4095), bits_stored=12, WindowCenter=2000, WindowWidth=0
    ),
    "8-bit, window of width 0": lambda: synthetic(
        noise(0, 255), bits_stored=8, WindowCenter=100, WindowWidth=0
    ),
}


@pytest.mark.parametrize("make", BROKEN.values(), ids=BROKEN.keys())
def test_broken_lut_or_window_attributes_are_refused_with_their_reason(
    make: Callable[[], Dataset],
) -> None:
    """pydicom fails on them as it applies them; both ways say the image is not analysable, and
    why, instead of letting pydicom's AttributeError or ValueError through."""
    ds = make()
    with pytest.raises(
        NotAnalysableError, match="modality or VOI LUT cannot be applied"
    ) as by_pixel:
        by_arithmetic(ds)
    with pytest.raises(
        NotAnalysableError, match="modality or VOI LUT cannot be applied"
    ) as by_table:
        to_display_uint8(ds)
    assert str(by_table.value) == str(by_pixel.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_percentiles_from_a_histogram_are_numpys(dtype: type[np.integer]) -> None:
    """For values given per code with their counts, the same floats as ``np.percentile`` of the
    image itself, at the percentiles used and at the ends and the middle."""
    info = np.iinfo(dtype)
    for trial in range(40):
        size = int(RNG.integers(1, 5000))
        low = int(RNG.integers(info.min, info.max))
        high = int(RNG.integers(low, info.max + 1))
        image = RNG.integers(low, high + 1, size).astype(dtype)
        unsigned = image.view(np.dtype(f"u{image.dtype.itemsize}"))
        counts = np.bincount(unsigned, minlength=1 << (8 * image.dtype.itemsize))
        codes = np.arange(counts.size, dtype=unsigned.dtype).view(dtype)
        # Rescaled (float64) on odd trials, as the modality LUT makes them; raw on even ones.
        values = codes * 0.37 - 11.5 if trial % 2 else codes
        pixels = image * 0.37 - 11.5 if trial % 2 else image
        wanted = (*PERCENTILES, 0.0, 50.0, 100.0, 33.3)
        expected = tuple(float(v) for v in np.percentile(pixels, wanted))
        assert _percentiles(values, counts, wanted) == expected
