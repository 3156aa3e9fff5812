"""scripts/render_gallery.py's objects: the synthetic phantom is deterministic and made here (no
pixels from the shared assets), and the objects it pictures are the worker's own, every kind,
linked, and valid per dciodvfy. The rendering itself (Orthanc, dcmtk, Chromium) runs in
`make gallery`; tests/integration/test_result_objects.py checks Orthanc's rendering of results.
"""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from db.models import ResultKind, SCEncoding
from tests.dicom_io import to_bytes
from tests.grounding_study import load_gallery
from tests.peers import dciodvfy_errors


@pytest.fixture(scope="module")
def gallery() -> ModuleType:
    return load_gallery()


def test_phantom_is_a_deterministic_12_bit_chest(gallery: ModuleType) -> None:
    first, second = gallery.phantom_pixels(), gallery.phantom_pixels()
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.uint16
    assert first.shape == (1024, 1024)
    assert int(first.max()) <= 4095
    # Lungs darker than the heart below the mediastinum, air darker than both.
    lung, heart, air = first[400, 300], first[650, 580], first[20, 20]
    assert air < lung < heart
    assert not np.array_equal(first, gallery.phantom_pixels(seed=1))


def test_gallery_objects_are_every_kind_linked_and_valid(
    gallery: ModuleType, tmp_path: Path
) -> None:
    source = gallery.phantom_dataset()
    results = gallery.build_objects(source)
    kinds = {(r.kind, r.sc_encoding) for r in results}
    assert kinds == {
        (ResultKind.HEATMAP_SC, SCEncoding.LOSSLESS),
        (ResultKind.HEATMAP_SC, SCEncoding.JPEG_BASELINE),
        (ResultKind.SUMMARY_SC, SCEncoding.LOSSLESS),
        (ResultKind.SUMMARY_SC, SCEncoding.JPEG_BASELINE),
        (ResultKind.PROBABILITY_SEG, None),
        (ResultKind.REGION_GSPS, None),
        (ResultKind.FINDINGS_SR, None),
        (ResultKind.NOT_ANALYSED_SR, None),
    }
    # The lateral copy must not change the source (its file meta once did, through a shallow copy).
    assert source.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert source.ViewPosition == "PA"
    for result in results:
        path = tmp_path / f"{gallery._file_name(result)}.dcm"
        path.write_bytes(to_bytes(result.dataset))
        errors, output = dciodvfy_errors(path)
        assert errors == [], f"dciodvfy on {path.name}:\n{output}"
    links = gallery.cross_references(results)
    assert "seg (SEG): step 1, job 1; 0008,114A -> findings-sr (126000" in links
    assert "gsps (PR): step 1, job 1\n" in links
    assert "not-analysed-sr (SR): step 2; evidence: source image" in links
