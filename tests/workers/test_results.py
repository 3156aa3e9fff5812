"""Result builders: round trip through bytes (strict pydicom read), dciodvfy, determinism, refusals.

Sources are the two real NIH chest X-rays in ../shared/assets/dicom: Secondary Capture objects with
Modality DX that lack PatientName (one of them), study date/time, accession number, series and
instance numbers, view position, body part and manufacturer, and carry a non-conformant PatientAge.
"""

import copy
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
from PIL import ImageFont
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

import radlight
from models.cam import cam_to_image
from models.labels import CHEST_XRAY14_LABELS
from models.preprocess import CropGeometry
from radlight.uids import deterministic_uid
from tests.dicom_io import strict_reading, to_bytes
from workers.results import (
    OVERLAY_SERIES_DESCRIPTION,
    REPORT_SERIES_DESCRIPTION,
    AlgorithmInfo,
    FindingScore,
    build_findings_report,
    build_heatmap_overlay,
    overlay,
)
from workers.results.common import AI_RESULT_WARNING
from workers.results.overlay import (
    JET_LUT,
    MAX_ALPHA,
    SUMMARY_PALETTE,
    LegendText,
    SummaryEntry,
    blend_heatmap,
    check_heatmap,
    grey_to_rgb,
    render_legend,
    render_summary_legend,
)
from workers.results.regions import FindingResult, ImageFindings
from workers.results.sr import INTENDED_USE

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
ALGORITHM = AlgorithmInfo(
    name="CheXNet-DenseNet121",
    version="1.2.3",
    sha256=hashlib.sha256(b"radlight test model").hexdigest(),
)
AMBER = np.array([255, 191, 0])


# -- helpers -----------------------------------------------------------------------------------


def read_strict(data: bytes) -> pydicom.Dataset:
    """Read ``data`` back in strict mode, converting every element so each value is validated."""
    with strict_reading():
        dataset = pydicom.dcmread(io.BytesIO(data))
        converted = [element.value for element in dataset.iterall()]
    assert converted
    return dataset


def dciodvfy(data: bytes, path: Path) -> list[str]:
    """dciodvfy's lines for ``data``; the test fails (not skips) where dicom3tools is missing."""
    executable = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not Path(executable).exists():
        pytest.fail("dciodvfy (dicom3tools) is needed to validate result objects")
    path.write_bytes(data)
    completed = subprocess.run(
        [executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return (completed.stdout + completed.stderr).splitlines()


def assert_no_dciodvfy_errors(lines: list[str]) -> None:
    errors = [line for line in lines if line.startswith("Error")]
    report = "\n".join(lines)
    assert not errors, f"dciodvfy reported errors:\n{report}"


def synthetic_heatmap(shape: tuple[int, int]) -> NDArray[np.float32]:
    """A smooth blob over the heart, peaking at exactly 1."""
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    centre_y, centre_x = rows * 0.6, columns * 0.45
    sigma = rows / 7
    blob = np.exp(-((yy - centre_y) ** 2 + (xx - centre_x) ** 2) / (2 * sigma**2))
    heatmap: NDArray[np.float32] = (blob / blob.max()).astype(np.float32)
    return heatmap


def all_findings(offset: float = 0.0) -> list[FindingScore]:
    return [
        FindingScore.for_label(label, round((index + 1) / 15 + offset, 4))
        for index, label in enumerate(CHEST_XRAY14_LABELS)
    ]


def overlay_for(
    source: pydicom.Dataset,
    *,
    finding: FindingScore | None = None,
    sop_instance_uid: str | None = None,
    heatmap: NDArray[np.floating] | None = None,
) -> hd.sc.SCImage:
    image = source.pixel_array
    return build_heatmap_overlay(
        source=source,
        display_image=image,
        heatmap=synthetic_heatmap(image.shape) if heatmap is None else heatmap,
        finding=finding or FindingScore.for_label("Cardiomegaly", 0.5437),
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test", "overlay-series", source.SOPInstanceUID),
        sop_instance_uid=sop_instance_uid
        or deterministic_uid("test", "overlay", source.SOPInstanceUID),
        series_number=901,
        instance_number=1,
        content_datetime=WHEN,
    )


def image_findings(
    source: pydicom.Dataset, scores: list[FindingScore], threshold: float = 0.5
) -> ImageFindings:
    """``scores`` on ``source`` at one threshold, without heatmaps or regions."""
    display = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint8)
    return ImageFindings(
        source=source,
        display=display,
        findings=[FindingResult(score=score, threshold=threshold) for score in scores],
    )


def report_for(
    sources: list[pydicom.Dataset],
    *,
    overlays: list[hd.sc.SCImage] | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.ComprehensiveSR:
    return build_findings_report(
        images=[image_findings(source, all_findings(0.01 * i)) for i, source in enumerate(sources)],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test", "report-series"),
        sop_instance_uid=sop_instance_uid or deterministic_uid("test", "report"),
        series_number=902,
        instance_number=1,
        evidence=overlays or (),
        content_datetime=WHEN,
    )


def header_copy(source: pydicom.Dataset, **changes: object) -> pydicom.Dataset:
    """A pixel-free copy of ``source``'s header with ``changes`` applied."""
    header = pydicom.Dataset()
    for element in source:
        if element.tag != 0x7FE00010:
            header.add(copy.deepcopy(element))
    for keyword, value in changes.items():
        setattr(header, keyword, value)
    return header


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


@pytest.fixture(params=[0, 1], ids=["nih_google", "nih_nhsx"])
def source(request: pytest.FixtureRequest, sources: list[pydicom.Dataset]) -> pydicom.Dataset:
    dataset: pydicom.Dataset = sources[request.param]
    return dataset


# -- heatmap overlay (Secondary Capture) -----------------------------------------------------


def test_overlay_round_trips_and_references_its_source(source: pydicom.Dataset) -> None:
    written = read_strict(to_bytes(overlay_for(source)))

    assert written.SOPClassUID == SecondaryCaptureImageStorage
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.PatientID == source.PatientID
    assert written.Modality == source.Modality == "DX"
    assert written.SeriesDescription == OVERLAY_SERIES_DESCRIPTION
    assert "not for primary diagnosis" in written.SeriesDescription.lower()
    assert written.BurnedInAnnotation == "YES"
    assert written.PhotometricInterpretation == "RGB"
    assert written.SamplesPerPixel == 3
    assert written.Columns == source.Columns
    assert written.Rows > source.Rows
    assert [item.ReferencedSOPInstanceUID for item in written.SourceImageSequence] == [
        source.SOPInstanceUID
    ]
    assert written.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    for text in ("CheXNet-DenseNet121", "1.2.3", ALGORITHM.sha256_prefix):
        assert text in written.DerivationDescription
        assert text in written.ImageComments
    assert "Cardiomegaly 0.54" in written.ImageComments
    assert AI_RESULT_WARNING in written.DerivationDescription
    assert AI_RESULT_WARNING in written.ImageComments
    equipment = written.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == ALGORITHM.name
    assert ALGORITHM.version in equipment.SoftwareVersions
    assert written.ContentDate == "20240506"


def test_overlay_pixels_are_the_blend_with_a_legend_band_below(source: pydicom.Dataset) -> None:
    image = source.pixel_array
    heatmap = synthetic_heatmap(image.shape)
    pixels = read_strict(to_bytes(overlay_for(source, heatmap=heatmap))).pixel_array

    rows = image.shape[0]
    np.testing.assert_array_equal(pixels[:rows], blend_heatmap(image, heatmap))
    assert not np.array_equal(pixels[:rows], np.repeat(image[..., None], 3, axis=2))
    band = pixels[rows:]
    assert band.shape[0] >= 60, "legend band too small to read on a 1024-wide image"
    assert len(np.unique(band.reshape(-1, 3), axis=0)) > 10, "legend band has no text"
    amber = np.all(np.abs(band.astype(int) - AMBER) <= 8, axis=-1)
    assert amber.sum() > 200, "the NOT FOR PRIMARY DIAGNOSIS line is missing"


def _float_blend(display: NDArray[np.uint8], heatmap: NDArray[np.floating]) -> NDArray[np.uint8]:
    """The blend as blend_heatmap computed it before its lookup table, in float32 from the exact
    heatmap value (the oracle)."""
    grey = display.astype(np.float32)[..., None]
    index = np.rint(np.asarray(heatmap, dtype=np.float64) * 255.0).astype(np.intp)
    colour = JET_LUT[np.clip(index, 0, 255)].astype(np.float32)
    alpha = (np.asarray(heatmap, dtype=np.float32) * np.float32(MAX_ALPHA))[..., None]
    blended = grey * (np.float32(1.0) - alpha) + colour * alpha
    rgb: NDArray[np.uint8] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return rgb


def test_blend_is_the_float_blend_on_every_heatmap_level_and_grey_pair() -> None:
    grey, level = np.meshgrid(np.arange(256), np.arange(256))
    display = grey.astype(np.uint8)
    heatmap = (level.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    np.testing.assert_array_equal(blend_heatmap(display, heatmap), _float_blend(display, heatmap))


def test_blend_of_real_heatmaps_is_within_one_level_of_the_float_blend(
    source: pydicom.Dataset,
) -> None:
    display = source.pixel_array
    geometry = CropGeometry(display.shape, (224, 224), (0, 0), 224)  # both sources are square
    rng = np.random.default_rng(8)
    maps = [
        cam_to_image(rng.standard_normal((7, 7)).astype(np.float32), geometry) for _ in range(4)
    ]
    maps += [synthetic_heatmap(display.shape), rng.random(display.shape, dtype=np.float32)]
    for heatmap in maps:
        difference = np.abs(
            blend_heatmap(display, heatmap).astype(int) - _float_blend(display, heatmap)
        )
        assert difference.max() <= 1  # invisible; the issue allows 2 of 255


def test_blend_writes_into_the_given_pixels() -> None:
    display = np.arange(12 * 5, dtype=np.uint8).reshape(12, 5)
    heatmap = np.linspace(0.0, 1.0, display.size, dtype=np.float32).reshape(display.shape)
    pixels = np.zeros((15, 5, 3), dtype=np.uint8)
    assert blend_heatmap(display, heatmap, out=pixels[:12]).base is pixels
    np.testing.assert_array_equal(pixels[:12], blend_heatmap(display, heatmap))
    assert not pixels[12:].any()
    with pytest.raises(ValueError, match="out must be"):
        blend_heatmap(display, heatmap, out=pixels)


def test_grey_to_rgb_repeats_the_grey_level() -> None:
    display = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(grey_to_rgb(display), np.repeat(display[..., None], 3, axis=2))


def _pillows_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font as Pillow gives it: nothing remembered (the oracle)."""
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont)
    return font


@pytest.mark.parametrize("width", [1024, 333, 2500])
def test_legends_drawn_from_remembered_text_are_pillows(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    legends = [
        LegendText(title=f"Pleural Thickening 0.{k}7", detail="Model: CheXNet 1.0 (x)")
        for k in range(3)
    ]
    entries = [
        SummaryEntry(f"Finding {k} 0.{k}1 (threshold 0.50)", SUMMARY_PALETTE[k].rgb)
        for k in range(3)
    ] + [SummaryEntry("+2 more above their threshold (see the report)")]
    drawn = [[render_legend(width, legend) for legend in legends] for _ in range(2)]
    summaries = [render_summary_legend(width, entries, "Model: CheXNet 1.0") for _ in range(2)]
    monkeypatch.setattr(overlay, "_font", _pillows_font)
    for again in range(2):  # first drawn, then remembered
        for legend, pixels in zip(legends, drawn[again], strict=True):
            np.testing.assert_array_equal(pixels, render_legend(width, legend))
        np.testing.assert_array_equal(
            summaries[again], render_summary_legend(width, entries, "Model: CheXNet 1.0")
        )


def test_overlay_passes_dciodvfy(source: pydicom.Dataset, tmp_path: Path) -> None:
    assert_no_dciodvfy_errors(dciodvfy(to_bytes(overlay_for(source)), tmp_path / "sc.dcm"))


def test_overlay_is_byte_identical_when_rebuilt(source: pydicom.Dataset) -> None:
    first = to_bytes(overlay_for(source))
    assert to_bytes(overlay_for(source)) == first
    other = overlay_for(source, sop_instance_uid=deterministic_uid("test", "other"))
    assert to_bytes(other) != first


def test_overlay_keeps_the_pixel_header_of_patient_and_study_empty_not_invented(
    sources: list[pydicom.Dataset],
) -> None:
    written = read_strict(to_bytes(overlay_for(sources[0])))

    assert "PatientName" not in sources[0]
    assert written.PatientName == ""
    assert written.StudyDate == ""
    assert written.AccessionNumber == ""
    assert written.PatientOrientation == ""
    assert "PatientAge" not in written


@pytest.mark.parametrize(
    ("heatmap", "message"),
    [
        (np.zeros((512, 512), dtype=np.float32), "shape"),
        (np.full((1024, 1024), 1.01, dtype=np.float32), r"\[0, 1\]"),
        (np.full((1024, 1024), -0.01, dtype=np.float32), r"\[0, 1\]"),
        (np.full((1024, 1024), np.nan, dtype=np.float32), "NaN"),
    ],
    ids=["wrong-shape", "above-one", "below-zero", "nan"],
)
def test_overlay_refuses_a_bad_heatmap(
    sources: list[pydicom.Dataset], heatmap: NDArray[np.float32], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        overlay_for(sources[0], heatmap=heatmap)


def test_overlay_refuses_a_display_image_of_another_size(sources: list[pydicom.Dataset]) -> None:
    small = np.zeros((512, 512), dtype=np.uint8)
    with pytest.raises(ValueError, match="display_image shape"):
        build_heatmap_overlay(
            source=sources[0],
            display_image=small,
            heatmap=np.zeros((512, 512), dtype=np.float32),
            finding=FindingScore.for_label("Mass", 0.2),
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("a"),
            sop_instance_uid=deterministic_uid("b"),
            series_number=1,
            instance_number=1,
        )


def test_overlay_of_a_small_image_still_has_the_whole_warning(
    sources: list[pydicom.Dataset],
) -> None:
    shape = (256, 256)
    small_source = header_copy(sources[0], Rows=shape[0], Columns=shape[1])
    overlay = build_heatmap_overlay(
        source=small_source,
        display_image=np.full(shape, 100, dtype=np.uint8),
        heatmap=synthetic_heatmap(shape),
        finding=FindingScore.for_label("Pleural_Thickening", 0.9),
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("a"),
        sop_instance_uid=deterministic_uid("b"),
        series_number=1,
        instance_number=1,
        content_datetime=WHEN,
    )
    assert overlay.Columns == 256
    assert "Pleural Thickening 0.90" in overlay.ImageComments


def test_legend_too_narrow_for_the_warning_is_refused() -> None:
    with pytest.raises(ValueError, match="too narrow"):
        render_legend(64, LegendText(title="Mass 0.10", detail="Model: x 1"))


# -- findings report (Comprehensive SR, TID 1500) -------------------------------------------


def test_report_round_trips_with_every_finding(source: pydicom.Dataset) -> None:
    overlay = overlay_for(source)
    written = read_strict(to_bytes(report_for([source], overlays=[overlay])))

    assert written.SOPClassUID == ComprehensiveSRStorage
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.PatientID == source.PatientID
    assert written.SeriesDescription == REPORT_SERIES_DESCRIPTION
    assert written.VerificationFlag == "UNVERIFIED"
    assert written.PreliminaryFlag == "PRELIMINARY"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in written.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, overlay.SOPInstanceUID}
    equipment = written.ContributingEquipmentSequence[0]
    assert (equipment.Manufacturer, equipment.ManufacturerModelName) == ("RadLight", ALGORITHM.name)
    assert ALGORITHM.version in equipment.SoftwareVersions

    report = hd.sr.MeasurementReport.from_sequence([written])
    groups = report.get_image_measurement_groups(referenced_sop_instance_uid=source.SOPInstanceUID)
    assert len(groups) == 1
    group = groups[0]
    assert group.tracking_uid == deterministic_uid(
        deterministic_uid("test", "report"), "measurement-group", source.SOPInstanceUID
    )
    measurements = group.get_measurements()
    expected = all_findings()
    assert [m.name.value for m in measurements] == [f.code.value for f in expected]
    assert [m.name.scheme_designator for m in measurements] == [
        f.code.scheme_designator for f in expected
    ]
    assert [float(m.value) for m in measurements] == pytest.approx(
        [f.probability for f in expected]
    )
    assert {m.unit.value for m in measurements} == {"{probability}"}
    for measurement in measurements:
        modifiers = {
            item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
            for item in measurement[0].ContentSequence
            if item.ValueType == "TEXT"
        }
        assert modifiers["111001"] == ALGORITHM.name  # Algorithm Name
        assert modifiers["111003"] == ALGORITHM.version  # Algorithm Version
        assert modifiers["111002"] == f"model sha256={ALGORITHM.sha256}"  # Algorithm Parameters
    evaluations = group.get_qualitative_evaluations(
        name=hd.sr.CodedConcept(
            INTENDED_USE.value, INTENDED_USE.scheme_designator, INTENDED_USE.meaning
        )
    )
    meanings = [e[0].ConceptCodeSequence[0].CodeMeaning for e in evaluations]
    assert meanings == [radlight.NOT_FOR_PRIMARY_DIAGNOSIS]


def test_report_names_the_algorithm_as_device_observer(sources: list[pydicom.Dataset]) -> None:
    written = read_strict(to_bytes(report_for([sources[0]])))
    texts = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue") or item.get("UID")
        for item in written.ContentSequence
    }
    assert texts["Device Observer Name"] == ALGORITHM.name
    assert texts["Device Observer Manufacturer"] == "RadLight"
    assert texts["Device Observer Model Name"] == ALGORITHM.title
    assert texts["Device Observer UID"] == deterministic_uid(
        "device-observer", ALGORITHM.name, ALGORITHM.version, ALGORITHM.sha256
    )


def test_report_passes_dciodvfy(source: pydicom.Dataset, tmp_path: Path) -> None:
    data = to_bytes(report_for([source], overlays=[overlay_for(source)]))
    assert_no_dciodvfy_errors(dciodvfy(data, tmp_path / "sr.dcm"))


def test_report_is_byte_identical_when_rebuilt(sources: list[pydicom.Dataset]) -> None:
    first = to_bytes(report_for([sources[1]]))
    assert to_bytes(report_for([sources[1]])) == first
    assert to_bytes(report_for([sources[1]], sop_instance_uid=deterministic_uid("x"))) != first


def test_report_groups_findings_per_image_of_one_study(
    sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    second = header_copy(
        sources[0], SOPInstanceUID=deterministic_uid("test", "second image of study")
    )
    written = read_strict(to_bytes(report_for([sources[0], second])))
    report = hd.sr.MeasurementReport.from_sequence([written])
    for image in (sources[0], second):
        groups = report.get_image_measurement_groups(
            referenced_sop_instance_uid=image.SOPInstanceUID
        )
        assert len(groups) == 1
        assert len(groups[0].get_measurements()) == len(CHEST_XRAY14_LABELS)
    assert_no_dciodvfy_errors(dciodvfy(to_bytes(written), tmp_path / "two.dcm"))


def _report(
    images: list[ImageFindings], evidence: list[hd.sc.SCImage] | None = None
) -> hd.sr.ComprehensiveSR:
    return build_findings_report(
        images=images,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("s"),
        sop_instance_uid=deterministic_uid("i"),
        series_number=1,
        instance_number=1,
        evidence=evidence or (),
    )


def test_report_refuses_inconsistent_inputs(sources: list[pydicom.Dataset]) -> None:
    first, other_study = sources
    with pytest.raises(ValueError, match="repeat"):
        _report([image_findings(first, all_findings()), image_findings(first, all_findings())])
    with pytest.raises(ValueError, match="no findings"):
        _report([image_findings(first, [])])
    with pytest.raises(ValueError, match="one study"):
        _report(
            [image_findings(first, all_findings()), image_findings(other_study, all_findings())]
        )
    twice = [FindingScore.for_label("Mass", 0.1), FindingScore.for_label("Mass", 0.2)]
    with pytest.raises(ValueError, match="twice"):
        _report([image_findings(first, twice)])
    with pytest.raises(ValueError, match="another study"):
        _report([image_findings(first, all_findings())], evidence=[overlay_for(other_study)])


# -- value objects ----------------------------------------------------------------------------


@pytest.mark.parametrize("probability", [-0.01, 1.0001, float("nan"), float("inf")])
def test_finding_score_refuses_a_probability_outside_zero_one(probability: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FindingScore.for_label("Mass", probability)


def test_finding_score_normalises_numpy_scalars_and_refuses_text() -> None:
    score = FindingScore.for_label("Hernia", np.float32(0.25))  # type: ignore[arg-type]
    assert type(score.probability) is float
    assert score.probability == 0.25
    with pytest.raises(TypeError, match="real number"):
        FindingScore.for_label("Hernia", "0.25")  # type: ignore[arg-type]


def test_heatmap_rounding_noise_is_clipped_not_refused() -> None:
    noisy = np.array([[-1e-7, 0.5], [1.0 + 1e-7, 1.0]], dtype=np.float64)
    checked = check_heatmap(noisy, (2, 2))
    assert float(checked.min()) == 0.0
    assert float(checked.max()) == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sha256": "abc"}, "64 hexadecimal"),
        ({"name": ""}, "empty"),
        ({"version": "x" * 65}, "at most 64"),
        ({"name": "a\\b"}, "backslash"),
    ],
    ids=["short-sha", "empty-name", "long-version", "backslash"],
)
def test_algorithm_info_refuses_bad_identity(changes: dict[str, str], message: str) -> None:
    values = {"name": "CheXNet", "version": "1", "sha256": "0" * 64, **changes}
    with pytest.raises(ValueError, match=message):
        AlgorithmInfo(**values)
