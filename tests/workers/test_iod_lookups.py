"""highdicom's IOD lookups, remembered: the same answers as highdicom's own function."""

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from highdicom import _standard_utils, base
from highdicom.sr import content as sr_content
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

import workers.results  # noqa: F401  (the builders turn the cache on when imported)
from workers.results import iod_lookups

SOP_CLASSES = [
    SecondaryCaptureImageStorage,
    DigitalXRayImageStorageForPresentation,
    SegmentationStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    ComprehensiveSRStorage,
]


def test_the_builders_turn_the_cache_on_everywhere_highdicom_bound_the_lookup() -> None:
    for module in (_standard_utils, base, sr_content):
        assert module.is_attribute_in_iod is iod_lookups.is_attribute_in_iod


@pytest.mark.parametrize("sop_class", SOP_CLASSES)
@pytest.mark.parametrize(
    ("attribute", "exclude"),
    [
        ("PixelData", None),
        ("PixelData", ["IconImageSequence"]),
        ("FloatPixelData", ["IconImageSequence"]),
        ("ContentDate", None),
        ("NumberOfFrames", None),
    ],
)
def test_answers_are_highdicoms(sop_class: str, attribute: str, exclude: list[str] | None) -> None:
    expected = iod_lookups._ORIGINAL(attribute, sop_class, exclude_path_elements=exclude)
    for _ in range(2):  # the first answer computed, the second remembered
        assert iod_lookups.is_attribute_in_iod(attribute, sop_class, exclude) is expected


def test_images_are_told_from_other_objects_as_before() -> None:
    assert _standard_utils.does_iod_have_pixel_data(SecondaryCaptureImageStorage)
    assert _standard_utils.does_iod_have_pixel_data(DigitalXRayImageStorageForPresentation)
    assert not _standard_utils.does_iod_have_pixel_data(ComprehensiveSRStorage)
    assert not _standard_utils.does_iod_have_pixel_data(GrayscaleSoftcopyPresentationStateStorage)
    report = Dataset()
    report.SOPClassUID = ComprehensiveSRStorage
    report.SOPInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="image"):
        hd.ReferencedImageSequence(referenced_images=[report])


def test_an_unknown_sop_class_is_still_refused() -> None:
    with pytest.raises(KeyError, match="No IOD"):
        iod_lookups.is_attribute_in_iod("PixelData", "1.2.3.4.5.6")


def test_the_worker_parent_reads_the_tables_and_freezes_before_its_pool_forks() -> None:
    """Celery's worker_init (sent in the parent before the pool forks) leaves highdicom's tables
    loaded and every object made so far frozen: no child reads the tables during its first job,
    and no child's full collection walks them. Importing the app alone (tests, the API) does
    neither."""
    probe = (
        "import gc\n"
        "from celery.signals import worker_init\n"
        "from highdicom import _standard_utils as s\n"
        "import workers.tasks\n"
        "loaders = (s.get_sop_class_iod_map, s.get_iod_module_map, s.get_module_attribute_map)\n"
        "print([f.cache_info().currsize for f in loaders], gc.get_freeze_count() > 0)\n"
        "worker_init.send(sender=None)\n"
        "print([f.cache_info().currsize for f in loaders], gc.get_freeze_count() > 100_000)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.splitlines() == ["[0, 0, 0] False", "[1, 1, 1] True"]
