"""The words a chest X-ray report uses: findings and their synonyms, locations, sides, report
regions, and the NegEx-style negation and uncertainty triggers.

Data only (compiled regular expressions over lower-case text); :mod:`models.grounding.phrases`
applies them. Every pattern is matched on word boundaries, and where two overlap the longer
match wins, so "reticular opacities" is Fibrosis and not the "opacity" of Infiltration.
"""

import re
from dataclasses import dataclass
from typing import Literal

Laterality = Literal["right", "left", "bilateral"]
ReportRegion = Literal["lung", "heart", "mediastinum", "bone"]
Polarity = Literal["positive", "negative"]


@dataclass(frozen=True)
class Term:
    """One surface form (a regex) and what it means: findings, or a statement of their absence
    ("normal heart size" says no Cardiomegaly)."""

    pattern: re.Pattern[str]
    findings: tuple[str, ...]
    polarity: Polarity = "positive"


def _term(regex: str, *findings: str, polarity: Polarity = "positive") -> Term:
    return Term(re.compile(rf"\b(?:{regex})\b"), tuple(findings), polarity)


_HEART = r"(?:heart|cardiac silhouette|cardiac shadow|cardiac size|heart size|cardiomediastinal silhouette)"
_BE = r"(?:is|are|appears|appear|remains|remain|seems|looks)"

# Labels use models/labels.py spelling (CHEST_XRAY14_LABELS).
FINDING_TERMS: tuple[Term, ...] = (
    _term(
        r"(?:subsegmental |plate[- ]like |discoid |linear |bibasilar |basal )?atelectas[ie]s",
        "Atelectasis",
    ),
    _term(
        r"atelectatic (?:change|changes|band|bands)|volume loss|(?:lobar )?collapse", "Atelectasis"
    ),
    _term(
        r"cardiomegaly|cardiac enlargement|enlarged (?:heart|cardiac (?:silhouette|shadow))",
        "Cardiomegaly",
    ),
    _term(
        rf"{_HEART}(?: size)? {_BE}(?: (?:mildly|moderately|markedly|severely|slightly))? enlarged",
        "Cardiomegaly",
    ),
    _term(
        r"increased cardiothoracic ratio|enlargement of the (?:heart|cardiac silhouette)",
        "Cardiomegaly",
    ),
    _term(
        rf"normal (?:heart|cardiac) size|{_HEART}(?: size)? {_BE}(?: within)? normal(?: limits)?|"
        rf"{_HEART}(?: size)? {_BE} not enlarged",
        "Cardiomegaly",
        polarity="negative",
    ),
    _term(r"(?:pleural )?effusions?|pleural fluid|hydrothorax|meniscus sign", "Effusion"),
    _term(
        r"blunting of (?:the )?(?:(?:right|left|both|bilateral) )?"
        r"(?:costophrenic|cp) (?:angles?|recess(?:es)?)",
        "Effusion",
    ),
    _term(
        rf"(?:costophrenic|cp) (?:angles?|recess(?:es)?) {_BE} blunted|blunted (?:costophrenic|cp) angles?",
        "Effusion",
    ),
    _term(r"infiltrates?|infiltration|infiltrative (?:change|changes|process)", "Infiltration"),
    _term(
        r"opacit(?:y|ies)|opacification|opacified|airspace (?:disease|shadowing)|shadowing",
        "Infiltration",
        "Consolidation",
    ),
    _term(
        r"(?:lung |pulmonary |mediastinal |hilar )?mass(?:es)?|tumou?rs?|neoplasms?|malignancy",
        "Mass",
    ),
    _term(
        r"(?:pulmonary |lung |calcified )?nodules?|nodular (?:opacit(?:y|ies)|densit(?:y|ies))|"
        r"coin lesions?|granulomas?",
        "Nodule",
    ),
    _term(
        r"(?:broncho)?pneumonias?|pneumonic (?:change|changes|process)|infectious process|"
        r"(?:chest |lung |pulmonary )?infection",
        "Pneumonia",
    ),
    _term(r"pneumothora(?:x|ces)|pleural air|(?:visible )?pleural line", "Pneumothorax"),
    _term(
        r"consolidations?|consolidative (?:change|changes|opacit(?:y|ies))|consolidated|"
        r"air bronchograms?|airspace opacit(?:y|ies)|lobar pneumonia",
        "Consolidation",
    ),
    _term(
        r"(?:pulmonary |interstitial |alveolar )?o?edema|(?:pulmonary )?(?:venous |vascular )congestion|"
        r"kerley b lines|cephali[sz]ation|fluid overload|upper lobe diversion",
        "Edema",
    ),
    _term(
        r"emphysema(?:tous(?: changes?)?)?|hyperinflat(?:ion|ed)(?: lungs)?|"
        r"hyperexpan(?:sion|ded)(?: lungs)?|"
        r"bullae|bullous (?:change|changes|disease)|bulla|copd",
        "Emphysema",
    ),
    _term(
        r"(?:pulmonary |interstitial )?fibrosis|fibrotic (?:change|changes)|scarring|honeycombing|"
        r"reticular (?:opacit(?:y|ies)|markings?|changes?)|interstitial lung disease",
        "Fibrosis",
    ),
    _term(
        r"pleural thickening|thickened pleura|pleural plaques?|apical (?:pleural )?caps?|"
        r"thickening of the pleura",
        "Pleural_Thickening",
    ),
    _term(
        r"(?:hiatal |hiatus |diaphragmatic |paraoesophageal |paraesophageal )?hernias?", "Hernia"
    ),
)

# Location name -> surface forms. Zone names are what LungFields.zone() knows.
LOCATION_TERMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rf"\b(?:{regex})\b"))
    for name, regex in (
        ("costophrenic angle", r"(?:costophrenic|cp) (?:angles?|recess(?:es)?)"),
        ("perihilar", r"peri-?hilar|parahilar"),
        ("hilum", r"hil(?:um|a|ar)"),
        ("retrocardiac", r"retro-?cardiac|behind the heart"),
        ("upper zone", r"upper (?:zones?|lobes?|lung(?: fields?| zones?)?)|upper"),
        (
            "middle zone",
            r"(?:mid|middle) (?:zones?|lobe|lung(?: fields?| zones?)?)|mid-?zones?|lingula(?:r)?|midlung",
        ),
        ("lower zone", r"lower (?:zones?|lobes?|lung(?: fields?| zones?)?)|lower"),
        ("apex", r"ap(?:ex|ices|ical)|apico-?\w*"),
        ("base", r"bases?|basal|basilar|bibasal|bibasilar|lung bases?"),
        ("heart", r"heart|cardiac|cardiomediastinal"),
        ("mediastinum", r"mediastin(?:um|al)|paratracheal|aortopulmonary window"),
    )
)

SIDE_TERMS: tuple[tuple[Laterality, re.Pattern[str]], ...] = (
    (
        "bilateral",
        re.compile(r"\b(?:bilateral(?:ly)?|both|bibasal|bibasilar|biapical|bilaterally)\b"),
    ),
    ("right", re.compile(r"\b(?:right|right-sided|rt)\b")),
    ("left", re.compile(r"\b(?:left|left-sided|lt)\b")),
)

# Words that place a sentence in one of the four regions of region-wise report annotation.
REGION_TERMS: tuple[tuple[ReportRegion, re.Pattern[str]], ...] = (
    (
        "bone",
        re.compile(
            r"\b(?:bones?|bony|osseous|ribs?|fractures?|spine|spinal|vertebra[el]?|clavicles?|scapula[re]?|"
            r"scoliosis|degenerative|osteopeni[ac]|sternotomy|sternum|humer(?:us|al)|skeletal|thoracolumbar)\b"
        ),
    ),
    (
        "mediastinum",
        re.compile(
            r"\b(?:mediastin(?:um|al)|aort(?:a|ic)|trachea[l]?|hil(?:um|a|ar)|paratracheal|esophag\w*|"
            r"oesophag\w*|hiatal|hiatus|thymus|superior vena cava)\b"
        ),
    ),
    (
        "heart",
        re.compile(
            r"\b(?:heart|cardiac|cardiomegaly|pericardial|cardiomediastinal|cardiothoracic)\b"
        ),
    ),
    (
        "lung",
        re.compile(
            r"\b(?:lungs?|pulmonary|pleura[l]?|zones?|lobes?|airspace|alveolar|interstitial|lingula|"
            r"bronch\w*|apex|apices|bases?|costophrenic|hemithorax|diaphragm\w*|parenchym\w*)\b"
        ),
    ),
)

# The region each finding speaks of, when its words alone decide it.
FINDING_REGION: dict[str, ReportRegion] = {
    "Cardiomegaly": "heart",
    "Hernia": "mediastinum",
}

# NegEx (Chapman et al. 2001) style triggers. Uncertainty is matched first and its spans are
# hidden from negation, so "cannot exclude" and "not ruled out" are uncertain, not negated.
PSEUDO_TRIGGERS = re.compile(
    r"\b(?:no (?:significant |interval |appreciable )?change|not only|no increase|"
    r"without (?:significant |interval )?change|not changed|unchanged)\b"
)
UNCERTAIN_PRE = re.compile(
    r"\b(?:cannot (?:be )?exclude[d]?|can ?not (?:be )?(?:excluded|ruled out)|cannot rule out|"
    r"may (?:represent|reflect|be|indicate)|might (?:represent|be)|could (?:represent|be|reflect)|"
    r"possible|possibly|probable|probably|likely|suggestive of|suggest(?:s|ing)?|suspicious for|"
    r"suspected|suspect|concerning for|questionable|equivocal|differential (?:diagnosis )?includes|"
    r"versus|vs|presumed|query|borderline|worrisome for|raises the possibility of)\b"
)
UNCERTAIN_POST = re.compile(
    r"\b(?:(?:is|are) (?:possible|suspected|not excluded|questioned|likely)|"
    r"(?:cannot|can not|could not) be (?:excluded|ruled out)|not (?:excluded|ruled out))\b|\?"
)
NEGATION_PRE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|clear of|resolution of|"
    r"resolved|rather than|never|nor|neither|denies|ruled out)\b"
)
NEGATION_POST = re.compile(
    r"\b(?:(?:is|are|was|were|has|have) "
    r"(?:not (?:seen|identified|present|visible|demonstrated|evident|noted)|"
    r"absent|resolved|cleared|gone)|not (?:seen|identified|present|visible|demonstrated|evident)|"
    r"(?:has|have) (?:since )?resolved|resolved|ruled out|absent|excluded)\b"
)
# Words that end a trigger's scope (NegEx conjunctions), and the start of a new statement.
TERMINATION = re.compile(
    r"\b(?:but|however|although|though|except|apart from|aside from|which|whereas|while|yet|"
    r"nevertheless|there (?:is|are)|is seen|are seen|is noted|are noted|otherwise)\b|[;:]"
)
