"""The probability SEG on the two real NIH chest X-rays with synthetic heatmaps: strict round trip,
highdicom re-read, dciodvfy, pixel values, determinism and refusals."""

import datetime
import hashlib
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray

from tests.dicom_io import strict_reading, to_bytes
from tests.peers import dciodvfy_errors
from workers.results.common import AlgorithmInfo, FindingScore
from workers.results.regions import FindingResult, ImageFindings, heatmap_region
from workers.results.seg import (
    SEGMENTATION_SERIES_DESCRIPTION,
    build_probability_segmentation,
)

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
ALGORITHM = AlgorithmInfo(
    name="CheXNet-DenseNet121",
    version="1.2.3",
    sha256=hashlib.sha256(b"radlight test model").hexdigest(),
)
SERIES_UID = "2.25.1001"
SOP_UID = "2.25.1002"


def read_strict(data: bytes) -> pydicom.Dataset:
    with strict_reading():
        dataset = pydicom.dcmread(io.BytesIO(data))
        assert [element.value for element in dataset.iterall()]
    return dataset


def blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> NDArray[np.float32]:
    """A Gaussian blob peaking at 1 at ``centre`` (row, column fractions of the image)."""
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = centre[0] * rows, centre[1] * columns
    values = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sigma * rows) ** 2))
    result: NDArray[np.float32] = (values / values.max()).astype(np.float32)
    return result


def finding(label: str, probability: float, heatmap: NDArray[np.float32] | None) -> FindingResult:
    region = heatmap_region(heatmap) if heatmap is not None else None
    return FindingResult(FindingScore.for_label(label, probability), 0.5, heatmap, region)


def findings_for(source: pydicom.Dataset) -> ImageFindings:
    shape = (int(source.Rows), int(source.Columns))
    return ImageFindings(
        source=source,
        display=source.pixel_array,
        findings=[
            finding("Cardiomegaly", 0.5437, blob(shape, (0.6, 0.45), 0.14)),
            finding("Pleural_Thickening", 0.81, blob(shape, (0.3, 0.7), 0.08) * 0.8),
            finding("Mass", 0.12, blob(shape, (0.2, 0.2), 0.05)),  # absent: no segment
            finding("Effusion", 0.66, None),  # present, no heatmap: no segment
        ],
    )


def build(image: ImageFindings, **changes: object) -> hd.seg.Segmentation | None:
    arguments: dict[str, object] = {
        "image": image,
        "algorithm": ALGORITHM,
        "series_instance_uid": SERIES_UID,
        "sop_instance_uid": SOP_UID,
        "series_number": 902,
        "instance_number": 1,
        "content_datetime": WHEN,
    }
    arguments.update(changes)
    return build_probability_segmentation(**arguments)  # type: ignore[arg-type]


@pytest.fixture(params=[0, 1], ids=["nih-1", "nih-2"])
def source(request: pytest.FixtureRequest, real_dicom_files: list[Path]) -> pydicom.Dataset:
    return pydicom.dcmread(real_dicom_files[request.param])


def test_round_trip_is_valid_and_reproduces_the_heatmaps(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    image = findings_for(source)
    segmentation = build(image)
    assert segmentation is not None
    data = to_bytes(segmentation)
    dataset = read_strict(data)
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    errors, output = dciodvfy_errors(path)
    assert errors == [], f"dciodvfy:\n{output}"

    reread = hd.seg.segread(path)
    assert reread.SegmentationType == "FRACTIONAL"
    assert reread.SegmentationFractionalType == "PROBABILITY"
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.PatientID == source.PatientID
    assert "not for primary diagnosis" in dataset.SeriesDescription
    assert dataset.SeriesDescription == SEGMENTATION_SERIES_DESCRIPTION
    assert reread.get_source_image_uids() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    ]
    # Present findings with a heatmap only, highest score first.
    labels = [item.SegmentLabel for item in dataset.SegmentSequence]
    assert labels == ["Pleural Thickening", "Cardiomegaly"]
    for item, label in zip(dataset.SegmentSequence, labels, strict=True):
        code = FindingScore.for_label(label.replace(" ", "_"), 0.5).code
        property_type = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0])
        assert (property_type.value, property_type.scheme_designator) == (
            code.value,
            code.scheme_designator,
        )
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
            "CheXNet-DenseNet121",
            "1.2.3",
        )
    equipment = [item.ManufacturerModelName for item in dataset.ContributingEquipmentSequence]
    assert "CheXNet-DenseNet121" in equipment

    pixels = reread.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2]
    )
    assert pixels.shape == (1, source.Rows, source.Columns, 2)
    expected = [image.findings[1].heatmap, image.findings[0].heatmap]
    for index, heatmap in enumerate(expected):
        assert heatmap is not None
        error = np.abs(pixels[0, :, :, index].astype(np.float64) - heatmap)
        assert float(error.max()) <= 1 / 255 + 1e-6


def test_rebuild_with_the_same_time_is_byte_identical(source: pydicom.Dataset) -> None:
    first, second = build(findings_for(source)), build(findings_for(source))
    assert first is not None
    assert second is not None
    assert to_bytes(first) == to_bytes(second)


def test_nothing_present_gives_none(source: pydicom.Dataset) -> None:
    shape = (int(source.Rows), int(source.Columns))
    absent = ImageFindings(
        source, source.pixel_array, [finding("Mass", 0.1, blob(shape, (0.5, 0.5), 0.1))]
    )
    assert build(absent) is None
    no_heatmap = ImageFindings(source, source.pixel_array, [finding("Mass", 0.9, None)])
    assert build(no_heatmap) is None


def test_heatmap_of_the_wrong_shape_or_range_is_refused(source: pydicom.Dataset) -> None:
    small = ImageFindings(
        source, source.pixel_array, [finding("Mass", 0.9, blob((64, 64), (0.5, 0.5), 0.1))]
    )
    with pytest.raises(ValueError, match="shape"):
        build(small)
    shape = (int(source.Rows), int(source.Columns))
    too_hot = ImageFindings(
        source, source.pixel_array, [finding("Mass", 0.9, blob(shape, (0.5, 0.5), 0.1) * 2)]
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build(too_hot)
    with pytest.raises(ValueError, match="UID"):
        build(findings_for(source), sop_instance_uid="not-a-uid")
