"""Cross-references between the objects of one job, so that a viewer or a script can go from any
one of them to all the others.

Every object of a job (heatmap and summary SCs, lossless and JPEG, SEG, GSPS, findings SR or
not-analysed SR) names the job the same way:

- Referenced Performed Procedure Step Sequence (0008,1111): one item, SOP class Modality Performed
  Procedure Step, SOP instance the job's step UID (deterministic, from the job's inputs and model).
  Type 3 in the General Series module (SC, SEG, GSPS), type 2 in the SR Document Series module.
- Performed Procedure Step ID (0040,0253) and Description (0040,0254): RadLight's job number and
  the model that ran. Type 3 in the General Series module only; the SR IODs have no such
  attribute (dciodvfy: "not present in standard DICOM IOD"), so the SRs carry the sequence alone.

Objects with the General Reference module (SC and SEG, both with the General Image module)
also reference the job's report in Referenced Instance Sequence (0008,114A), whose Purpose of
Reference is DCM 126000 "Imaging Measurement Report": the title (concept name) of the referenced
TID 1500 document itself. The GSPS has no such module (the Presentation State IODs do not include
it; dciodvfy warns on every attribute of it) and no other attribute that may name a non-image
instance, so it is tied to its job by the step alone. The report lists every other object of the
job as evidence (``sr.build_findings_report``), which closes the circle.

highdicom has no constructor for these attributes, so the items are plain pydicom datasets with
the code made by highdicom. No I/O: ``link_job_objects`` adds the attributes to the objects it is
given, in place, and gives the same bytes for the same inputs.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from workers.results.common import check_text, check_uid

# PS3.4 Annex F: the SOP class a Referenced Performed Procedure Step Sequence item names.
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
# DCM 126000, the TID 1500 document title: what the referenced report is to an image of its job.
REPORT_PURPOSE = hd.sr.CodedConcept.from_code(codes.DCM.ImagingMeasurementReport)
# SOP classes whose IODs include the General Series module (Performed Procedure Step ID and
# Description) and, for the first two, the General Reference module (Referenced Instance Sequence).
_WITH_REFERENCED_INSTANCES = frozenset({SecondaryCaptureImageStorage, SegmentationStorage})
_WITH_GENERAL_SERIES = _WITH_REFERENCED_INSTANCES | {GrayscaleSoftcopyPresentationStateStorage}
_SR_CLASSES = frozenset({ComprehensiveSRStorage})
_SH_MAX = 16


@dataclass(frozen=True)
class JobStep:
    """The job as its objects name it: step UID, ID (DICOM SH) and description (DICOM LO)."""

    uid: str
    step_id: str
    description: str

    def __post_init__(self) -> None:
        check_uid(self.uid, "JobStep.uid")
        check_text(self.step_id, "JobStep.step_id", _SH_MAX)
        check_text(self.description, "JobStep.description")


@dataclass(frozen=True)
class ReportReference:
    """The job's report: what the images of the job reference."""

    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        check_uid(self.sop_class_uid, "ReportReference.sop_class_uid")
        check_uid(self.sop_instance_uid, "ReportReference.sop_instance_uid")


def _step_item(step: JobStep) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = MODALITY_PERFORMED_PROCEDURE_STEP
    item.ReferencedSOPInstanceUID = step.uid
    return item


def _report_item(report: ReportReference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = report.sop_class_uid
    item.ReferencedSOPInstanceUID = report.sop_instance_uid
    item.PurposeOfReferenceCodeSequence = [REPORT_PURPOSE]
    return item


def link_job_objects(
    objects: Sequence[Dataset], step: JobStep, report: ReportReference | None = None
) -> None:
    """Give each of ``objects`` the job's step and, where its IOD allows it, a reference to
    ``report``.

    ``objects`` are the job's result objects, of one study (ValueError otherwise), of the SOP
    classes RadLight writes (SC, SEG, GSPS, Comprehensive SR; ValueError for others). The report
    itself is not made to reference itself. Calling it again replaces rather than repeats.
    """
    if not isinstance(step, JobStep):
        raise TypeError("step must be a JobStep")
    if report is not None and not isinstance(report, ReportReference):
        raise TypeError("report must be a ReportReference or None")
    if isinstance(objects, Dataset) or not isinstance(objects, Sequence):
        raise TypeError("objects must be a sequence of pydicom Datasets")
    known = _WITH_GENERAL_SERIES | _SR_CLASSES
    for i, dataset in enumerate(objects):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"objects[{i}] must be a pydicom Dataset")
        if dataset.get("SOPClassUID") not in known:
            raise ValueError(
                f"objects[{i}] has a SOP class RadLight does not link: "
                f"{dataset.get('SOPClassUID')!r}"
            )
    if len({str(dataset.StudyInstanceUID) for dataset in objects}) > 1:
        raise ValueError("the objects of one job belong to one study")

    for dataset in objects:
        sop_class = dataset.SOPClassUID
        dataset.ReferencedPerformedProcedureStepSequence = [_step_item(step)]
        if sop_class in _WITH_GENERAL_SERIES:
            dataset.PerformedProcedureStepID = step.step_id
            dataset.PerformedProcedureStepDescription = step.description
        if (
            report is not None
            and sop_class in _WITH_REFERENCED_INSTANCES
            and dataset.SOPInstanceUID != report.sop_instance_uid
        ):
            others = [
                item
                for item in dataset.get("ReferencedInstanceSequence", [])
                if item.get("ReferencedSOPInstanceUID") != report.sop_instance_uid
            ]
            dataset.ReferencedInstanceSequence = [*others, _report_item(report)]
