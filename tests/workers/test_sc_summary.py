"""Secondary Capture overlays: the summary image per source, the JPEG baseline option of both
kinds, and the legend's warning. Sources are the two real NIH chest X-rays (../shared/assets/dicom)
with synthetic findings; every object is read back strictly, re-read by highdicom and validated
with dciodvfy."""

import datetime
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)

from radlight.uids import deterministic_uid
from tests.dicom_io import strict_reading, to_bytes
from workers.results.common import AI_RESULT_WARNING, AlgorithmInfo, FindingScore
from workers.results.overlay import SUMMARY_PALETTE, LegendText, outline_width_for, pixel_box
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings, heatmap_region
from workers.results.sc import (
    NO_FINDING_TEXT,
    SUMMARY_SERIES_DESCRIPTION,
    build_heatmap_overlay,
    build_summary_overlay,
    legend_text,
)

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
ALGORITHM = AlgorithmInfo(
    name="CheXNet-DenseNet121",
    version="1.2.3",
    sha256=hashlib.sha256(b"radlight test model").hexdigest(),
)
TRANSFER_SYNTAXES = pytest.mark.parametrize(
    "transfer_syntax_uid", [ExplicitVRLittleEndian, JPEGBaseline8Bit], ids=["lossless", "jpeg"]
)
# JPEG baseline at highdicom's quality 95 with 4:2:0 chroma: how far its pixels may stray.
JPEG_MEAN_ERROR = 3.0
JPEG_P99_ERROR = 24.0


# -- helpers (also used by test_sc_orthanc) ----------------------------------------------------


def read_strict(data: bytes) -> pydicom.Dataset:
    """``data`` read back in strict mode, every element's value converted (and so validated)."""
    with strict_reading():
        dataset = pydicom.dcmread(io.BytesIO(data))
        assert [element.value for element in dataset.iterall()]
    return dataset


def dciodvfy_errors(data: bytes, path: Path) -> tuple[list[str], str]:
    """dciodvfy ``-new``'s Error lines for ``data``, and its whole report."""
    executable = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not Path(executable).exists():
        pytest.fail("dciodvfy (dicom3tools) is needed to validate result objects")
    path.write_bytes(data)
    completed = subprocess.run(
        [executable, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], "\n".join(lines)


def blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> NDArray[np.float32]:
    """A Gaussian heatmap peaking at 1 at ``centre`` (row, column fractions of ``shape``)."""
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows * centre[0], columns * centre[1]
    values = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sigma * rows) ** 2))
    heatmap: NDArray[np.float32] = (values / values.max()).astype(np.float32)
    return heatmap


def region_of(heatmap: NDArray[np.float32]) -> HeatmapRegion:
    region = heatmap_region(heatmap)
    assert region is not None
    return region


def synthetic_findings(source: pydicom.Dataset) -> ImageFindings:
    """Two present findings with separate regions, one present without a region, one absent."""
    display = source.pixel_array
    shape = display.shape
    heart, effusion, mass = (
        blob(shape, (0.6, 0.4), 0.08),
        blob(shape, (0.3, 0.75), 0.06),
        blob(shape, (0.25, 0.25), 0.05),
    )
    return ImageFindings(
        source=source,
        display=display,
        findings=[
            FindingResult(FindingScore.for_label("Mass", 0.30), 0.5, mass, region_of(mass)),
            FindingResult(
                FindingScore.for_label("Effusion", 0.66), 0.4, effusion, region_of(effusion)
            ),
            FindingResult(FindingScore.for_label("Nodule", 0.55), 0.5, None, None),
            FindingResult(
                FindingScore.for_label("Cardiomegaly", 0.81), 0.5, heart, region_of(heart)
            ),
        ],
    )


def summary_for(
    image: ImageFindings,
    *,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    max_findings: int = 5,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    uid = str(image.source.SOPInstanceUID)
    return build_summary_overlay(
        image=image,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test", "summary-series", uid),
        sop_instance_uid=sop_instance_uid
        or deterministic_uid("test", "summary", uid, transfer_syntax_uid),
        series_number=903,
        instance_number=1,
        content_datetime=WHEN,
        max_findings=max_findings,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def heatmap_overlay_for(
    image: ImageFindings, *, transfer_syntax_uid: str = ExplicitVRLittleEndian
) -> hd.sc.SCImage:
    """The heatmap overlay of ``image``'s top finding."""
    top = image.present()[0]
    assert top.heatmap is not None
    uid = str(image.source.SOPInstanceUID)
    return build_heatmap_overlay(
        source=image.source,
        display_image=image.display,
        heatmap=top.heatmap,
        finding=top.score,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test", "overlay-series", uid),
        sop_instance_uid=deterministic_uid("test", "overlay", uid, transfer_syntax_uid),
        series_number=901,
        instance_number=1,
        content_datetime=WHEN,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def border_and_interior(
    region: HeatmapRegion, shape: tuple[int, int]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Masks of a region's outline (``outline_width_for`` pixels inside its box) and the rest
    of the box."""
    box = pixel_box((region.x0, region.y0, region.x1, region.y1), shape)
    assert box is not None
    left, top, right, bottom = box
    width = outline_width_for(shape)
    inside = np.zeros(shape, dtype=bool)
    inside[top : bottom + 1, left : right + 1] = True
    interior = np.zeros(shape, dtype=bool)
    interior[top + width : bottom + 1 - width, left + width : right + 1 - width] = True
    return inside & ~interior, interior


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


@pytest.fixture(params=[0, 1], ids=["nih_google", "nih_nhsx"])
def source(request: pytest.FixtureRequest, sources: list[pydicom.Dataset]) -> pydicom.Dataset:
    dataset: pydicom.Dataset = sources[request.param]
    return dataset


# -- summary image -----------------------------------------------------------------------------


@TRANSFER_SYNTAXES
def test_summary_round_trips_references_its_source_and_rereads_in_highdicom(
    source: pydicom.Dataset, transfer_syntax_uid: str
) -> None:
    image = synthetic_findings(source)
    data = to_bytes(summary_for(image, transfer_syntax_uid=transfer_syntax_uid))
    written = read_strict(data)

    assert written.file_meta.TransferSyntaxUID == transfer_syntax_uid
    assert written.SOPClassUID == SecondaryCaptureImageStorage
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.PatientID == source.PatientID
    assert written.SeriesDescription == SUMMARY_SERIES_DESCRIPTION
    assert written.SeriesDescription == "RadLight AI summary - not for primary diagnosis"
    assert written.BurnedInAnnotation == "YES"
    assert written.SamplesPerPixel == 3
    assert (written.Columns, written.Rows > source.Rows) == (source.Columns, True)
    assert [item.ReferencedSOPInstanceUID for item in written.SourceImageSequence] == [
        source.SOPInstanceUID
    ]
    assert written.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    comments = written.ImageComments
    for text in (
        "Cardiomegaly 0.81 (red)",
        "Effusion 0.66 (green)",
        "Nodule 0.55 (no region)",
        ALGORITHM.title,
        ALGORITHM.sha256_prefix,
        AI_RESULT_WARNING,
    ):
        assert text in comments
    assert "Mass" not in comments  # below its threshold
    assert AI_RESULT_WARNING in written.DerivationDescription
    assert written.ContributingEquipmentSequence[0].ManufacturerModelName == ALGORITHM.name

    reread = hd.imread(io.BytesIO(data))
    assert isinstance(reread, hd.Image)
    assert reread.SOPInstanceUID == written.SOPInstanceUID
    assert reread.get_frame(1).shape == (written.Rows, written.Columns, 3)


def test_summary_outlines_each_present_region_in_its_colour_and_keeps_the_grey_image(
    source: pydicom.Dataset,
) -> None:
    image = synthetic_findings(source)
    pixels = read_strict(to_bytes(summary_for(image))).pixel_array
    shape = image.display.shape
    picture, band = pixels[: shape[0]], pixels[shape[0] :]
    grey = np.repeat(image.display[..., None], 3, axis=2)

    outlined = [f for f in image.present() if f.region is not None]
    assert [f.score.label for f in outlined] == ["Cardiomegaly", "Effusion"]
    painted = np.zeros(shape, dtype=bool)
    for finding, colour in zip(outlined, SUMMARY_PALETTE, strict=False):
        assert finding.region is not None
        border, interior = border_and_interior(finding.region, shape)
        assert border.sum() > 1000
        assert np.all(picture[border] == colour.rgb), f"{finding.score.label} outline"
        np.testing.assert_array_equal(picture[interior], grey[interior])
        painted |= border
        swatch = np.all(band == colour.rgb, axis=-1).sum()
        assert swatch >= 100, f"no {colour.name} swatch in the legend"
    # Everything else, the absent finding's region included, is the untouched grey image.
    np.testing.assert_array_equal(picture[~painted], grey[~painted])
    amber = np.all(np.abs(band.astype(int) - (255, 191, 0)) <= 8, axis=-1)
    assert amber.sum() > 200, "the warning line is missing"


def test_summary_without_a_present_finding_is_still_made_and_says_so(
    sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    source = sources[0]
    region = HeatmapRegion(100, 100, 300, 300, 200, 200)
    image = ImageFindings(
        source=source,
        display=source.pixel_array,
        findings=[FindingResult(FindingScore.for_label("Mass", 0.2), 0.5, None, region)],
    )
    data = to_bytes(summary_for(image))
    written = read_strict(data)

    assert written.ImageComments.startswith(NO_FINDING_TEXT)
    assert NO_FINDING_TEXT in written.DerivationDescription
    rows = int(source.Rows)
    pixels = written.pixel_array
    np.testing.assert_array_equal(pixels[:rows], np.repeat(source.pixel_array[..., None], 3, 2))
    for colour in SUMMARY_PALETTE:
        assert not np.all(pixels[rows:] == colour.rgb, axis=-1).any()
    errors, report = dciodvfy_errors(data, tmp_path / "none.dcm")
    assert not errors, report


def test_summary_outlines_at_most_max_findings_and_counts_the_rest(
    sources: list[pydicom.Dataset],
) -> None:
    image = synthetic_findings(sources[1])
    written = read_strict(to_bytes(summary_for(image, max_findings=1)))

    assert "Cardiomegaly 0.81 (red)" in written.ImageComments
    assert "Effusion" not in written.ImageComments
    assert "+2 more above their threshold" in written.ImageComments
    picture = written.pixel_array[: int(sources[1].Rows)]
    assert not np.all(picture == SUMMARY_PALETTE[1].rgb, axis=-1).any()


@TRANSFER_SYNTAXES
def test_summary_and_heatmap_overlay_pass_dciodvfy(
    source: pydicom.Dataset, transfer_syntax_uid: str, tmp_path: Path
) -> None:
    image = synthetic_findings(source)
    for kind, built in (
        ("summary", summary_for(image, transfer_syntax_uid=transfer_syntax_uid)),
        ("heatmap", heatmap_overlay_for(image, transfer_syntax_uid=transfer_syntax_uid)),
    ):
        errors, report = dciodvfy_errors(to_bytes(built), tmp_path / f"{kind}.dcm")
        assert not errors, f"{kind}:\n{report}"
        assert "SCImage" in report  # dciodvfy recognised the IOD it checked


@TRANSFER_SYNTAXES
def test_summary_is_byte_identical_when_rebuilt(
    sources: list[pydicom.Dataset], transfer_syntax_uid: str
) -> None:
    image = synthetic_findings(sources[0])
    first = to_bytes(summary_for(image, transfer_syntax_uid=transfer_syntax_uid))
    assert to_bytes(summary_for(image, transfer_syntax_uid=transfer_syntax_uid)) == first
    other = summary_for(
        image, transfer_syntax_uid=transfer_syntax_uid, sop_instance_uid=deterministic_uid("x")
    )
    assert to_bytes(other) != first


# -- JPEG baseline option ----------------------------------------------------------------------


def test_jpeg_variants_are_marked_lossy_and_decode_close_to_the_lossless_ones(
    source: pydicom.Dataset,
) -> None:
    image = synthetic_findings(source)
    for build in (summary_for, heatmap_overlay_for):
        lossless = read_strict(to_bytes(build(image)))
        lossy_bytes = to_bytes(build(image, transfer_syntax_uid=JPEGBaseline8Bit))
        lossy = read_strict(lossy_bytes)

        assert lossless.get("LossyImageCompression") is None
        assert lossy.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert lossy.PhotometricInterpretation == "YBR_FULL_422"
        assert lossy.LossyImageCompression == "01"
        assert lossy.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(lossy.LossyImageCompressionRatio) > 3.0
        assert len(lossy_bytes) * 3 < len(to_bytes(lossless))
        decoded = lossy.pixel_array.astype(np.int16)  # pylibjpeg; YCbCr converted to RGB
        error = np.abs(decoded - lossless.pixel_array.astype(np.int16))
        assert decoded.shape == lossless.pixel_array.shape
        assert float(error.mean()) < JPEG_MEAN_ERROR
        assert float(np.percentile(error, 99)) < JPEG_P99_ERROR


def test_jpeg_summary_outline_keeps_its_colour(sources: list[pydicom.Dataset]) -> None:
    image = synthetic_findings(sources[0])
    pixels = read_strict(to_bytes(summary_for(image, transfer_syntax_uid=JPEGBaseline8Bit)))
    decoded = pixels.pixel_array.astype(np.float64)
    palette = np.array([c.rgb for c in SUMMARY_PALETTE], dtype=np.float64)
    outlined = [f for f in image.present() if f.region is not None]
    for index, finding in enumerate(outlined):
        assert finding.region is not None
        border, _ = border_and_interior(finding.region, image.display.shape)
        mean = decoded[: image.display.shape[0]][border].mean(axis=0)
        nearest = int(np.argmin(np.linalg.norm(palette - mean, axis=1)))
        assert nearest == index, (finding.score.label, mean)


# -- legend text and refusals ------------------------------------------------------------------


def test_heatmap_legend_names_finding_score_model_and_the_warning() -> None:
    text = legend_text(FindingScore.for_label("Pleural_Thickening", 0.904), ALGORITHM)
    assert text == LegendText(
        title="Pleural Thickening 0.90",
        detail="Model: CheXNet-DenseNet121 1.2.3",
        warning="AI result - not for primary diagnosis",
    )
    assert LegendText(title="x", detail="y").warning == AI_RESULT_WARNING


@pytest.mark.parametrize("max_findings", [0, len(SUMMARY_PALETTE) + 1])
def test_summary_refuses_more_findings_than_colours(
    sources: list[pydicom.Dataset], max_findings: int
) -> None:
    with pytest.raises(ValueError, match="max_findings"):
        summary_for(synthetic_findings(sources[0]), max_findings=max_findings)


@pytest.mark.parametrize("transfer_syntax_uid", [JPEG2000Lossless, "1.2.3"])
def test_overlays_refuse_other_transfer_syntaxes(
    sources: list[pydicom.Dataset], transfer_syntax_uid: str
) -> None:
    image = synthetic_findings(sources[0])
    with pytest.raises(ValueError, match="not supported"):
        summary_for(image, transfer_syntax_uid=transfer_syntax_uid)
    with pytest.raises(ValueError, match="not supported"):
        heatmap_overlay_for(image, transfer_syntax_uid=transfer_syntax_uid)


def test_summary_refuses_what_is_not_image_findings(sources: list[pydicom.Dataset]) -> None:
    with pytest.raises(TypeError, match="ImageFindings"):
        build_summary_overlay(
            image=sources[0],  # type: ignore[arg-type]
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("a"),
            sop_instance_uid=deterministic_uid("b"),
            series_number=1,
            instance_number=1,
        )


def test_summary_of_a_small_image_with_many_findings_stays_valid(
    sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    shape = (256, 256)
    header = pydicom.Dataset()
    for element in sources[1]:
        if element.tag != 0x7FE00010:
            header.add(element)
    header.Rows, header.Columns = shape
    labels = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule"]
    findings = [
        FindingResult(
            FindingScore.for_label(label, 0.9 - 0.05 * index),
            0.5,
            None,
            HeatmapRegion(10 + 40 * index, 20, 45 + 40 * index, 60, 20 + 40 * index, 40),
        )
        for index, label in enumerate(labels)
    ]
    image = ImageFindings(source=header, display=np.full(shape, 90, np.uint8), findings=findings)
    data = to_bytes(summary_for(image))
    written = read_strict(data)

    for colour, label in zip(SUMMARY_PALETTE, labels, strict=False):
        assert f"{label} " in written.ImageComments
        assert f"({colour.name})" in written.ImageComments
        assert np.all(written.pixel_array[: shape[0]] == colour.rgb, axis=-1).any()
    assert "+1 more above their threshold" in written.ImageComments
    errors, report = dciodvfy_errors(data, tmp_path / "small.dcm")
    assert not errors, report
