"""From a stored instance to an 8-bit frontal chest image, or the reason why not.

Most data sets are the two real NIH chest X-rays with tags edited (as the assets README suggests:
they lack ViewPosition, BodyPartExamined and VOI attributes); small synthetic ones cover what the
real files cannot (12/16-bit with a window, colour, constant).
"""

import copy
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_node.pixels import to_display_uint8
from radlight.errors import NotAnalysableError
from workers.imaging import check_frontal_chest, check_input_contract, load_frontal_chest


@pytest.fixture(scope="module")
def originals(real_dicom_files: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


@pytest.fixture(params=[0, 1], ids=["nih_google", "nih_nhsx"])
def real(request: pytest.FixtureRequest, originals: list[Dataset]) -> Dataset:
    """A fresh (deep) copy of one real file, free to edit."""
    fresh: Dataset = copy.deepcopy(originals[request.param])
    return fresh


def synthetic(
    pixels: NDArray[np.integer],
    *,
    bits_stored: int,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **attributes: object,
) -> Dataset:
    """A minimal DX image around ``pixels`` (2-D), uncompressed, with ``attributes`` set."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}
    ds.PixelData = pixels.astype(dtype[(int(ds.BitsAllocated), signed)]).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def not_analysable(ds: Dataset) -> str:
    with pytest.raises(NotAnalysableError) as caught:
        load_frontal_chest(ds)
    return str(caught.value)


# -- images that are read ------------------------------------------------------------------------


def test_real_8_bit_image_without_voi_is_kept_as_is(real: Dataset) -> None:
    image = load_frontal_chest(real)
    assert image.dtype == np.uint8
    assert image.shape == (1024, 1024)
    np.testing.assert_array_equal(image, real.pixel_array)


def test_monochrome1_is_inverted(real: Dataset) -> None:
    real.PhotometricInterpretation = "MONOCHROME1"
    image = load_frontal_chest(real)
    np.testing.assert_array_equal(image, 255 - real.pixel_array)


@pytest.mark.parametrize("tsyntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=str)
def test_lossless_compressed_real_image_decodes_to_the_same_pixels(
    originals: list[Dataset], tsyntax: UID
) -> None:
    ds = crop(originals[0], 256)
    expected = ds.pixel_array.copy()
    ds.compress(tsyntax)
    assert ds.file_meta.TransferSyntaxUID == tsyntax
    np.testing.assert_array_equal(load_frontal_chest(ds), expected)


def test_real_image_as_12_bit_with_a_full_range_window_looks_the_same(real: Dataset) -> None:
    """The real pixels scaled to 12 bits with a window over 0..4095 come back as they were."""
    original = real.pixel_array.astype(np.int32)
    ds = synthetic(original * 16 + 8, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    image = load_frontal_chest(ds)
    assert np.abs(image.astype(np.int32) - original).max() <= 1


def ramp(low: int, high: int, size: int = 128) -> NDArray[np.int64]:
    """Columns going from ``low`` to ``high`` in equal steps, each column constant."""
    return np.tile(np.linspace(low, high, size).round().astype(np.int64), (size, 1))


def test_voi_window_is_applied_to_a_12_bit_image() -> None:
    # Window 1500..2500 over values 0..4000: below black, above white, linear in between.
    pixels = ramp(0, 4000, 161)  # steps of 25
    ds = synthetic(pixels, bits_stored=12, WindowCenter=2000, WindowWidth=1000)
    image = load_frontal_chest(ds)
    row, values = image[0].astype(int), pixels[0]
    assert set(row[values <= 1500]) == {0}
    assert set(row[values >= 2500]) == {255}
    inside = (values > 1500) & (values < 2500)
    expected = (values[inside] - 1500) / 1000 * 255
    assert np.abs(row[inside] - expected).max() <= 1.5
    assert np.all(np.diff(row) >= 0)


def test_voi_window_wider_than_the_image_is_not_stretched() -> None:
    """Values 1000..3000 in a 0..4000 window are mid greys (64..191), not black to white."""
    ds = synthetic(ramp(1000, 3000), bits_stored=12, WindowCenter=2000, WindowWidth=4000)
    row = load_frontal_chest(ds)[0].astype(int)
    assert abs(row[0] - 64) <= 1
    assert abs(row[-1] - 191) <= 1
    assert abs(row[len(row) // 2] - 128) <= 1


def test_voi_window_on_a_monochrome1_image_is_inverted_after_windowing() -> None:
    pixels = ramp(0, 4000, 161)
    plain = synthetic(pixels, bits_stored=12, WindowCenter=2000, WindowWidth=1000)
    inverted = synthetic(
        pixels, bits_stored=12, WindowCenter=2000, WindowWidth=1000, photometric="MONOCHROME1"
    )
    np.testing.assert_array_equal(load_frontal_chest(inverted), 255 - load_frontal_chest(plain))


def test_voi_window_after_a_rescale_of_signed_16_bit_values() -> None:
    """Stored -1024..3071, rescaled by +1000, windowed 0..1000: the window is in rescaled units."""
    pixels = ramp(-1024, 3071, 128)
    ds = synthetic(
        pixels,
        bits_stored=16,
        signed=True,
        RescaleSlope=1,
        RescaleIntercept=1000,
        WindowCenter=500,
        WindowWidth=1000,
    )
    row, rescaled = load_frontal_chest(ds)[0].astype(int), pixels[0] + 1000
    assert set(row[rescaled <= 0]) == {0}
    assert set(row[rescaled >= 1000]) == {255}
    middle = int(np.argmin(np.abs(rescaled - 500)))
    assert abs(row[middle] - 255 * (rescaled[middle] / 1000)) <= 1.5


def test_16_bit_image_without_voi_is_scaled_to_its_own_range() -> None:
    pixels = ramp(10_000, 50_000)
    image = load_frontal_chest(synthetic(pixels, bits_stored=16))
    row = image[0].astype(int)
    assert row[0] == 0
    assert row[-1] == 255
    assert np.all(np.diff(row) >= 0)


# -- images that are not read, and why ---------------------------------------------------------


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_lateral_view_is_not_analysable(real: Dataset, view: str) -> None:
    real.ViewPosition = view
    assert not_analysable(real) == (
        f"view position {view} is lateral; the model reads frontal views"
    )


@pytest.mark.parametrize("view", ["PA", "AP", ""])
def test_frontal_or_unstated_view_is_accepted(real: Dataset, view: str) -> None:
    real.ViewPosition = view
    real.BodyPartExamined = "CHEST"
    check_frontal_chest(real)  # does not raise
    assert load_frontal_chest(real).shape == (1024, 1024)


def test_ct_is_not_analysable(real: Dataset) -> None:
    real.Modality = "CT"
    assert not_analysable(real) == "modality CT is not CR or DX"


def test_missing_modality_is_not_analysable(real: Dataset) -> None:
    del real.Modality
    assert not_analysable(real) == "modality missing is not CR or DX"


def test_head_is_not_analysable(real: Dataset) -> None:
    real.BodyPartExamined = "HEAD"
    assert not_analysable(real) == "body part HEAD is not the chest"


def test_missing_pixel_data_is_not_analysable(real: Dataset) -> None:
    del real.PixelData
    assert not_analysable(real) == "the instance has no pixel data"


def test_colour_image_is_not_analysable() -> None:
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(64, dtype=np.uint8)
    ds = synthetic(np.zeros((64, 64), dtype=np.uint8), bits_stored=8)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    assert not_analysable(ds) == "colour images are not radiographs the model reads"


def test_multi_frame_image_is_not_analysable(real: Dataset) -> None:
    real.NumberOfFrames = 2
    real.PixelData = real.PixelData * 2
    assert real.pixel_array.shape == (2, 1024, 1024)  # a valid two-frame image
    assert not_analysable(real) == "multi-frame images are not supported"


def test_tiny_image_is_not_analysable() -> None:
    ds = synthetic(ramp(0, 255, 32), bits_stored=8)
    assert not_analysable(ds) == "image size 32x32 is outside 64..8192"


def test_constant_8_bit_image_is_not_analysable(real: Dataset) -> None:
    real.PixelData = bytes([77]) * len(real.PixelData)
    assert not_analysable(real) == "the image has no contrast (constant pixel values)"


def test_constant_12_bit_image_is_not_analysable() -> None:
    ds = synthetic(np.full((128, 128), 1234), bits_stored=12)
    assert not_analysable(ds) == "the image has no contrast (constant pixel values)"


def test_image_entirely_outside_its_window_is_not_analysable() -> None:
    ds = synthetic(ramp(0, 1000), bits_stored=12, WindowCenter=3000, WindowWidth=500)
    assert not_analysable(ds) == "the image has no contrast (constant pixel values)"


def crop(ds: Dataset, side: int) -> Dataset:
    """The top-left ``side`` square of an uncompressed 8-bit image, as a new data set."""
    cropped = copy.deepcopy(ds)
    cropped.PixelData = np.ascontiguousarray(ds.pixel_array[:side, :side]).tobytes()
    cropped.Rows = cropped.Columns = side
    return cropped


@pytest.mark.parametrize("tsyntax", [RLELossless, JPEG2000Lossless], ids=str)
def test_truncated_compressed_pixel_data_is_not_analysable(
    originals: list[Dataset], tsyntax: UID
) -> None:
    ds = crop(originals[0], 256)
    ds.compress(tsyntax)
    # The only frame's codestream, cut to its first third.
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert len(frame) > 1000
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3]])
    reason = not_analysable(ds)
    assert reason.startswith("the pixel data cannot be decoded: ")
    assert "Unable to decode" in reason


def test_garbage_compressed_pixel_data_is_not_analysable(originals: list[Dataset]) -> None:
    ds = crop(originals[0], 256)
    ds.compress(JPEG2000Lossless)
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x01\x02\x03" * 64])
    assert not_analysable(ds).startswith("the pixel data cannot be decoded: ")


def test_to_display_uint8_refuses_non_greyscale_photometric(real: Dataset) -> None:
    """A single-sample palette image passes the header checks but is not greyscale."""
    real.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(NotAnalysableError, match="photometric interpretation PALETTE COLOR"):
        to_display_uint8(real)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ViewPosition": "AP"}, None),
        ({"ViewPosition": "PA"}, None),
        ({}, None),
        ({"ViewPosition": "LLD"}, "view position LLD is not one this model reads (AP, PA)"),
        ({"Modality": "CR"}, "modality CR is not one this model reads (DX)"),
    ],
)
def test_card_input_contract(changes: dict[str, str], message: str | None) -> None:
    ds = Dataset()
    ds.Modality = "DX"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if message is None:
        check_input_contract(ds, ("DX",), ("AP", "PA"))
    else:
        with pytest.raises(NotAnalysableError, match=re.escape(message)):
            check_input_contract(ds, ("DX",), ("AP", "PA"))
