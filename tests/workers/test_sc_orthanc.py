"""Orthanc as the PACS: it stores the Secondary Capture overlays (lossless and JPEG baseline), and
the preview it renders (`/instances/{id}/preview`, PNG) shows the overlay: the heatmap's hot area
in colour with a grey corner, and the summary image's outlines in their colours at the region
borders around a grey inside."""

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from tests.dicom_io import to_bytes
from tests.peers import Orthanc, require_tools, run_orthanc
from tests.workers.test_sc_summary import (
    border_and_interior,
    heatmap_overlay_for,
    summary_for,
    synthetic_findings,
)
from workers.results.overlay import SUMMARY_PALETTE

pytestmark = [pytest.mark.integration]

# A channel spread (max - min of R, G, B) above this is colour; below GREY_SPREAD it is grey.
COLOUR_SPREAD = 60
GREY_SPREAD = 6


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require_tools()
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@pytest.fixture(scope="module")
def source(real_dicom_files: list[Path]) -> pydicom.Dataset:
    return pydicom.dcmread(real_dicom_files[0])


def store_and_preview(orthanc: Orthanc, dataset: pydicom.Dataset) -> NDArray[np.int16]:
    """POST ``dataset`` to Orthanc, check it is stored in the source's study, and return its
    rendered preview as RGB."""
    response = httpx.post(orthanc.url + "/instances", content=to_bytes(dataset), timeout=60)
    response.raise_for_status()
    stored = response.json()
    assert stored["Status"] == "Success", stored
    tags = orthanc.get(f"/instances/{stored['ID']}/simplified-tags")
    assert tags["SOPInstanceUID"] == dataset.SOPInstanceUID
    assert tags["StudyInstanceUID"] == dataset.StudyInstanceUID
    assert tags["BurnedInAnnotation"] == "YES"
    png = orthanc.get_bytes(f"/instances/{stored['ID']}/preview")
    with Image.open(io.BytesIO(png)) as preview:
        assert preview.format == "PNG"
        assert preview.size == (dataset.Columns, dataset.Rows)
        return np.asarray(preview.convert("RGB"), dtype=np.int16)


def spread(pixels: NDArray[np.int16]) -> NDArray[np.int16]:
    result: NDArray[np.int16] = pixels.max(axis=-1) - pixels.min(axis=-1)
    return result


@pytest.mark.parametrize(
    "transfer_syntax_uid", [ExplicitVRLittleEndian, JPEGBaseline8Bit], ids=["lossless", "jpeg"]
)
def test_orthanc_preview_of_the_heatmap_overlay_shows_the_hot_area_in_colour(
    orthanc: Orthanc, source: pydicom.Dataset, transfer_syntax_uid: str
) -> None:
    image = synthetic_findings(source)
    top = image.present()[0]
    assert top.heatmap is not None
    assert top.region is not None
    preview = store_and_preview(
        orthanc, heatmap_overlay_for(image, transfer_syntax_uid=transfer_syntax_uid)
    )

    peak_row, peak_col = int(top.region.peak_y), int(top.region.peak_x)
    hot = preview[peak_row - 10 : peak_row + 10, peak_col - 10 : peak_col + 10]
    assert int(np.median(spread(hot))) > COLOUR_SPREAD, hot[10, 10]
    assert float(top.heatmap[:40, :40].max()) < 1e-3  # the corner is cold ...
    corner = preview[:40, :40]
    assert int(spread(corner).max()) <= GREY_SPREAD, "... and stays grey"


@pytest.mark.parametrize(
    "transfer_syntax_uid", [ExplicitVRLittleEndian, JPEGBaseline8Bit], ids=["lossless", "jpeg"]
)
def test_orthanc_preview_of_the_summary_shows_each_outline_in_its_colour(
    orthanc: Orthanc, source: pydicom.Dataset, transfer_syntax_uid: str
) -> None:
    image = synthetic_findings(source)
    preview = store_and_preview(
        orthanc, summary_for(image, transfer_syntax_uid=transfer_syntax_uid)
    )
    picture = preview[: image.display.shape[0]]
    palette = np.array([colour.rgb for colour in SUMMARY_PALETTE], dtype=np.float64)
    outlined = [f for f in image.present() if f.region is not None]
    assert len(outlined) == 2
    for index, finding in enumerate(outlined):
        assert finding.region is not None
        border, interior = border_and_interior(finding.region, image.display.shape)
        if transfer_syntax_uid == ExplicitVRLittleEndian:
            assert np.all(picture[border] == SUMMARY_PALETTE[index].rgb)
        mean = picture[border].astype(np.float64).mean(axis=0)
        nearest = int(np.argmin(np.linalg.norm(palette - mean, axis=1)))
        assert nearest == index, (finding.score.label, mean)
        assert float(np.median(spread(picture[border]))) > COLOUR_SPREAD
        assert float(np.median(spread(picture[interior]))) <= GREY_SPREAD
