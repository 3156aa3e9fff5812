"""The region GSPS on the two real NIH chest X-rays with synthetic regions: strict round trip,
highdicom's constructors over what was read back, dciodvfy, dcmtk's dcmp2pgm rendering, determinism
and refusals.

dcmp2pgm renders the image through the presentation state's VOI, presentation LUT, displayed area
and shutters; dcmtk hands graphic annotations and activated graphic overlays to the viewer instead of
burning them in (dcmimgle creates such overlay planes invisible). The test therefore checks the
rendered image against the image rendered without the GSPS, the annotations as dcmtk reads them
(``-v`` dump), and the overlay bitmap dcmtk extracts from the GSPS (``ovl_*.pgm``).
"""

import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray

from tests.dicom_io import to_bytes
from tests.peers import dciodvfy_errors
from tests.workers.test_seg import ALGORITHM, WHEN, read_strict
from workers.results.common import FindingScore
from workers.results.gsps import (
    ANNOTATION_SERIES_DESCRIPTION,
    DISCLAIMER,
    GRAPHIC_LAYER,
    build_region_annotations,
)
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings

DCMP2PGM = "/usr/bin/dcmp2pgm"
CARDIOMEGALY = HeatmapRegion(x0=300, y0=420, x1=700, y1=800, peak_x=500, peak_y=600)
EFFUSION = HeatmapRegion(x0=640, y0=100, x1=900, y1=300, peak_x=700, peak_y=200)


def findings_for(source: pydicom.Dataset) -> ImageFindings:
    return ImageFindings(
        source=source,
        display=source.pixel_array,
        findings=[
            FindingResult(FindingScore.for_label("Cardiomegaly", 0.5437), 0.5, None, CARDIOMEGALY),
            FindingResult(FindingScore.for_label("Effusion", 0.71), 0.5, None, EFFUSION),
            FindingResult(  # absent: not drawn
                FindingScore.for_label("Mass", 0.2),
                0.5,
                None,
                HeatmapRegion(x0=10, y0=10, x1=50, y1=50, peak_x=20, peak_y=20),
            ),
        ],
    )


def build(
    image: ImageFindings, **changes: object
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    arguments: dict[str, object] = {
        "image": image,
        "algorithm": ALGORITHM,
        "series_instance_uid": "2.25.2001",
        "sop_instance_uid": "2.25.2002",
        "series_number": 903,
        "instance_number": 1,
        "content_datetime": WHEN,
    }
    arguments.update(changes)
    return build_region_annotations(**arguments)  # type: ignore[arg-type]


@pytest.fixture(params=[0, 1], ids=["nih-1", "nih-2"])
def source_path(request: pytest.FixtureRequest, real_dicom_files: list[Path]) -> Path:
    return real_dicom_files[int(request.param)]


def read_pgm(path: Path) -> NDArray[np.uint8]:
    data = path.read_bytes()
    magic, width, height, maximum, _ = data.split(maxsplit=4)
    assert (magic, maximum) == (b"P5", b"255")
    size = int(width) * int(height)
    return np.frombuffer(data[-size:], dtype=np.uint8).reshape(int(height), int(width))


def dcmp2pgm(arguments: list[str], cwd: Path) -> str:
    completed = subprocess.run(
        [DCMP2PGM, *arguments], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"dcmp2pgm {arguments}:\n{output}"
    return output


def edge_pixels(region: HeatmapRegion) -> list[tuple[int, int]]:
    """(row, column) of pixels on the box's four edges, inside the box."""
    x0, y0, x1, y1 = int(region.x0), int(region.y0), int(region.x1) - 1, int(region.y1) - 1
    points = [(y0, x) for x in range(x0, x1 + 1, 7)] + [(y1, x) for x in range(x0, x1 + 1, 7)]
    points += [(y, x0) for y in range(y0, y1 + 1, 7)] + [(y, x1) for y in range(y0, y1 + 1, 7)]
    return points


def far_mask(
    shape: tuple[int, int], regions: list[HeatmapRegion], margin: int
) -> NDArray[np.bool_]:
    far = np.ones(shape, dtype=bool)
    for r in regions:
        far[
            max(0, int(r.y0) - margin) : int(r.y1) + margin,
            max(0, int(r.x0) - margin) : int(r.x1) + margin,
        ] = False
    return far


def test_round_trip_is_valid(source_path: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(source_path)
    state = build(findings_for(source))
    assert state is not None
    data = to_bytes(state)
    dataset = read_strict(data)
    path = tmp_path / "gsps.dcm"
    path.write_bytes(data)
    errors, output = dciodvfy_errors(path)
    assert errors == [], f"dciodvfy:\n{output}"

    assert dataset.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    assert dataset.SeriesDescription == ANNOTATION_SERIES_DESCRIPTION
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.PatientName == source.get("PatientName", "")  # copied, never invented
    referenced = dataset.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [item.GraphicLayer for item in dataset.GraphicLayerSequence] == [GRAPHIC_LAYER]
    voi = dataset.SoftcopyVOILUTSequence[0]  # the source has no window: its full 8-bit range
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (128.0, 256.0)
    assert dataset.PresentationLUTShape == "IDENTITY"

    # highdicom's constructors accept every graphic and text object as read back.
    annotation = dataset.GraphicAnnotationSequence[0]
    assert annotation.GraphicLayer == GRAPHIC_LAYER
    polygons = []
    for item in annotation.GraphicObjectSequence:
        points = np.array(item.GraphicData, dtype=np.float64).reshape(-1, 2)
        hd.pr.GraphicObject(
            graphic_type=item.GraphicType, graphic_data=points, units=item.GraphicAnnotationUnits
        )
        polygons.append(points)
    assert [p.tolist() for p in polygons] == [
        EFFUSION.polygon().tolist(),
        CARDIOMEGALY.polygon().tolist(),
    ]
    texts = []
    for item in annotation.TextObjectSequence:
        units = item.get("BoundingBoxAnnotationUnits") or item.AnchorPointAnnotationUnits
        box = item.get("BoundingBoxTopLeftHandCorner")
        hd.pr.TextObject(
            text_value=item.UnformattedTextValue,
            units=units,
            bounding_box=(*box, *item.BoundingBoxBottomRightHandCorner) if box else None,
            anchor_point=tuple(item.AnchorPoint) if "AnchorPoint" in item else None,
        )
        texts.append(item.UnformattedTextValue)
    assert texts[:2] == ["Effusion 0.71", "Cardiomegaly 0.54"]
    assert texts[2].startswith(DISCLAIMER)
    label = annotation.TextObjectSequence[1]
    assert tuple(label.AnchorPoint) == (CARDIOMEGALY.x0, CARDIOMEGALY.y0)
    assert label.BoundingBoxTopLeftHandCorner[0] == CARDIOMEGALY.x0
    assert label.BoundingBoxBottomRightHandCorner[1] == CARDIOMEGALY.y0


def test_dcmp2pgm_renders_the_source_with_the_annotation_on_the_region(
    source_path: Path, tmp_path: Path
) -> None:
    source = pydicom.dcmread(source_path)
    if not source.get("PatientName"):
        # dcmtk refuses a presentation state with an empty (type 2) Patient Name; see gsps.py.
        source.PatientName = "Test^Patient"
    state = build(findings_for(source))
    assert state is not None
    gsps = tmp_path / "gsps.dcm"
    gsps.write_bytes(to_bytes(state))

    dump = dcmp2pgm(["-v", "-p", str(gsps), str(source_path), "with.pgm"], tmp_path)
    dcmp2pgm([str(source_path), "without.pgm"], tmp_path)
    with_gsps, without = read_pgm(tmp_path / "with.pgm"), read_pgm(tmp_path / "without.pgm")
    assert with_gsps.shape == (source.Rows, source.Columns)
    # The window makes the image display as the source does, pixel for pixel.
    np.testing.assert_array_equal(with_gsps, without)
    np.testing.assert_array_equal(with_gsps, source.pixel_array)

    # dcmtk reads the polylines at the regions, in pixel units, and the labels.
    assert f"Graphic Layer #1 [{GRAPHIC_LAYER}]" in dump
    coordinates = re.findall(r"coordinates: (.*)", dump)
    expected = {
        ", ".join(f"{x:g}\\{y:g}" for x, y in region.polygon().tolist()) + ","
        for region in (CARDIOMEGALY, EFFUSION)
    }
    assert {line.strip() for line in coordinates} == expected, dump
    assert '"Cardiomegaly 0.54"' in dump
    assert '"Effusion 0.71"' in dump
    assert "type=polyline filled=no units=pixel" in dump

    # The outline overlay as dcmtk extracts it, composed over the rendered image.
    overlays = sorted(tmp_path.glob("ovl_*.pgm"))
    assert len(overlays) == 1, dump
    overlay = read_pgm(overlays[0]) > 0
    shown = np.where(overlay, 255, with_gsps)
    for row, column in edge_pixels(CARDIOMEGALY) + edge_pixels(EFFUSION):
        assert shown[row, column] == 255, (row, column)
    changed = shown != without
    assert changed[int(CARDIOMEGALY.y0), 300:700].mean() > 0.5
    far = far_mask(overlay.shape, [CARDIOMEGALY, EFFUSION], margin=8)
    assert not changed[far].any()
    assert not overlay[far].any()


def test_source_window_and_monochrome1_are_kept(real_dicom_files: list[Path]) -> None:
    source = pydicom.dcmread(real_dicom_files[1])
    source.WindowCenter, source.WindowWidth = 100, 80
    source.PhotometricInterpretation = "MONOCHROME1"
    state = build(findings_for(source))
    assert state is not None
    voi = state.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (100.0, 80.0)
    assert state.PresentationLUTShape == "INVERSE"


def test_rebuild_with_the_same_time_is_byte_identical(source_path: Path) -> None:
    source = pydicom.dcmread(source_path)
    first, second = build(findings_for(source)), build(findings_for(source))
    assert first is not None
    assert second is not None
    assert to_bytes(first) == to_bytes(second)


def test_nothing_present_gives_none(source_path: Path) -> None:
    source = pydicom.dcmread(source_path)
    absent = ImageFindings(
        source,
        source.pixel_array,
        [FindingResult(FindingScore.for_label("Mass", 0.2), 0.5, None, CARDIOMEGALY)],
    )
    assert build(absent) is None
    no_region = ImageFindings(
        source,
        source.pixel_array,
        [FindingResult(FindingScore.for_label("Mass", 0.9), 0.5, None, None)],
    )
    assert build(no_region) is None


def test_region_outside_the_image_is_refused(source_path: Path) -> None:
    source = pydicom.dcmread(source_path)
    outside = HeatmapRegion(x0=900, y0=900, x1=1100, y1=1000, peak_x=950, peak_y=950)
    image = ImageFindings(
        source,
        source.pixel_array,
        [FindingResult(FindingScore.for_label("Mass", 0.9), 0.5, None, outside)],
    )
    with pytest.raises(ValueError, match="outside"):
        build(image)
    rgb = source.copy()
    rgb.PhotometricInterpretation = "RGB"
    with pytest.raises(ValueError, match="MONOCHROME"):
        build(ImageFindings(rgb, source.pixel_array, findings_for(source).findings))
