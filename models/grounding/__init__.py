"""Grounding: a report phrase -> the region of the chest X-ray it speaks of.

numpy in, numpy out. One job per module:

- :mod:`~models.grounding.lexicon`: the words (findings, places, sides, negation triggers);
- :mod:`~models.grounding.phrases`: report text -> :class:`Phrase` list (:func:`parse_report`);
- :mod:`~models.grounding.lungs`: image -> :class:`LungFields` and their zones;
- :mod:`~models.grounding.grounder`: :class:`CamPriorGrounder`, CAM times anatomical prior;
- :mod:`~models.grounding.adapter`: a registry model as the grounder's ``classify`` callable.
"""

from models.grounding.adapter import classifier_callable, grounder_for
from models.grounding.grounder import (
    GROUNDER_NAME,
    GROUNDER_VERSION,
    CamPriorGrounder,
    Classify,
    ClassifyResult,
    GroundedPhrase,
    Grounder,
)
from models.grounding.lexicon import Laterality, ReportRegion
from models.grounding.lungs import ZONE_NAMES, LungFields, segment_lung_fields
from models.grounding.phrases import Phrase, parse_report

__all__ = [
    "GROUNDER_NAME",
    "GROUNDER_VERSION",
    "ZONE_NAMES",
    "CamPriorGrounder",
    "Classify",
    "ClassifyResult",
    "GroundedPhrase",
    "Grounder",
    "Laterality",
    "LungFields",
    "Phrase",
    "ReportRegion",
    "classifier_callable",
    "grounder_for",
    "parse_report",
    "segment_lung_fields",
]
