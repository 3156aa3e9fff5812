"""A study to ground, made at test time: the gallery's synthetic chest phantom (no licence limits
on its pixels) and the radiologist's report as a Basic Text SR, both real DICOM."""

import copy
import functools
import importlib.util
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

from radlight.uids import deterministic_uid
from tests.conftest import REPO_ROOT

REPORT = (
    "FINDINGS: Large right pleural effusion with blunting of the right costophrenic angle. "
    "Consolidation in the left upper zone. No pneumothorax. Heart size is normal.\n\n"
    "IMPRESSION: Right pleural effusion. Left upper zone consolidation, possibly pneumonia."
)


def load_gallery() -> ModuleType:
    """scripts/render_gallery.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "render_gallery", REPO_ROOT / "scripts" / "render_gallery.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_gallery"] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def _phantom(size: int) -> Dataset:
    """The gallery's phantom dataset with its pixels drawn at ``size`` x ``size`` (drawn once)."""
    gallery = load_gallery()
    pixels = np.asarray(gallery.phantom_pixels(size, size), dtype=np.uint16)
    # Else phantom_dataset() draws 1024 x 1024 again.
    gallery.phantom_pixels = lambda: pixels  # type: ignore[attr-defined]
    ds: Dataset = gallery.phantom_dataset()
    ds.ImagerPixelSpacing = [0.4 * 1024 / size] * 2
    return ds


def phantom_image(name: str, *, size: int = 512) -> Dataset:
    """The gallery's 12-bit DX phantom at ``size`` x ``size``, as its own study named ``name``."""
    ds = copy.deepcopy(_phantom(size))
    ds.StudyInstanceUID = deterministic_uid("grounding-test", name, "study")
    ds.SeriesInstanceUID = deterministic_uid("grounding-test", name, "series")
    ds.SOPInstanceUID = deterministic_uid("grounding-test", name, "image")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = "GROUND1"
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def report_sr(image: Dataset, text: str = REPORT) -> Dataset:
    """The radiologist's report on ``image`` as a Basic Text SR (PS3.3 A.35.1): a titled
    container with one TEXT item per paragraph, as reporting systems send it."""
    when = datetime(2026, 12, 1, 10, 30)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = deterministic_uid(str(image.SOPInstanceUID), "report")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, copy.deepcopy(image.get(keyword, "")))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "SR"
    ds.SeriesInstanceUID = deterministic_uid(str(image.SOPInstanceUID), "report-series")
    ds.SeriesNumber, ds.InstanceNumber = 50, 1
    ds.Manufacturer = "Test RIS"
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    items = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
        item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
        item.TextValue = paragraph
        items.append(item)
    ds.ContentSequence = Sequence(items)
    evidence = Dataset()
    evidence.StudyInstanceUID = image.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series.ReferencedSOPSequence = Sequence([ref])
    evidence.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
