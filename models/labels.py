"""The 14 ChestX-ray14 findings in CheXNet output order, with the codes the SR uses for them.

Codes are SNOMED CT where the DICOM standard's own code tables (as shipped by pydicom) or SNOMED CT
have a matching concept; a concept with no confirmed code uses the local scheme ``99RADLIGHT``
rather than a guessed SNOMED code.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FindingCode:
    """A coded concept (value, scheme, meaning) as DICOM SR wants it."""

    value: str
    scheme_designator: str
    meaning: str


SCT = "SCT"
LOCAL = "99RADLIGHT"

CHEST_XRAY14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

FINDING_CODES: dict[str, FindingCode] = {
    "Atelectasis": FindingCode("46621007", SCT, "Atelectasis"),
    "Cardiomegaly": FindingCode("287272002", SCT, "Cardiomegaly"),
    "Effusion": FindingCode("60046008", SCT, "Pleural effusion"),
    "Infiltration": FindingCode("409609008", SCT, "Radiologic infiltrate of lung"),
    "Mass": FindingCode("4147007", SCT, "Mass"),
    "Nodule": FindingCode("27925004", SCT, "Nodule"),
    "Pneumonia": FindingCode("233604007", SCT, "Pneumonia"),
    "Pneumothorax": FindingCode("36118008", SCT, "Pneumothorax"),
    "Consolidation": FindingCode("95436008", SCT, "Lung consolidation"),
    "Edema": FindingCode("19242006", SCT, "Pulmonary edema"),
    "Emphysema": FindingCode("87433001", SCT, "Pulmonary emphysema"),
    "Fibrosis": FindingCode("51615001", SCT, "Fibrosis of lung"),
    "Pleural_Thickening": FindingCode("PLEURAL_THICKENING", LOCAL, "Pleural thickening"),
    "Hernia": FindingCode("84089009", SCT, "Hiatal hernia"),
    # torchxrayvision's extra outputs: no SNOMED CT code could be confirmed here, so local codes.
    "Lung Lesion": FindingCode("LUNG_LESION", LOCAL, "Lung lesion"),
    "Fracture": FindingCode("FRACTURE", LOCAL, "Fracture"),
    "Lung Opacity": FindingCode("LUNG_OPACITY", LOCAL, "Lung opacity"),
    "Enlarged Cardiomediastinum": FindingCode(
        "ENL_CARDIOMEDIAS", LOCAL, "Enlarged cardiomediastinum"
    ),
}


def finding_code(label: str) -> FindingCode:
    """The code for ``label``; an unknown label gets a local code so no finding is ever dropped."""
    known = FINDING_CODES.get(label)
    if known is not None:
        return known
    return FindingCode(label.upper()[:16], LOCAL, label.replace("_", " ")[:64])
