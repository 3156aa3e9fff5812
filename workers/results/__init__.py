"""Result builders: pure functions from arrays and source datasets to highdicom objects.

``build_heatmap_overlay`` makes an RGB Secondary Capture per finding heatmap,
``build_summary_overlay`` one per source with every present finding's region outlined, and
``build_findings_report`` a TID 1500 Comprehensive SR with every image's findings (scores,
present/absent at the threshold, regions), ``build_not_analysed_report`` one with the coded reason
each received image was not analysed.
``build_probability_segmentation`` a fractional SEG and ``build_region_annotations`` a GSPS with
the present findings' regions, per source image. None touches the database, the store or the
network; the pipeline writes what they return.
"""

from workers.results.common import AlgorithmInfo, FindingScore
from workers.results.gsps import ANNOTATION_SERIES_DESCRIPTION, build_region_annotations
from workers.results.sc import (
    OVERLAY_SERIES_DESCRIPTION,
    SUMMARY_SERIES_DESCRIPTION,
    build_heatmap_overlay,
    build_summary_overlay,
)
from workers.results.seg import SEGMENTATION_SERIES_DESCRIPTION, build_probability_segmentation
from workers.results.sr import (
    NOT_ANALYSED_SERIES_DESCRIPTION,
    REPORT_SERIES_DESCRIPTION,
    build_findings_report,
    build_not_analysed_report,
)

__all__ = [
    "ANNOTATION_SERIES_DESCRIPTION",
    "NOT_ANALYSED_SERIES_DESCRIPTION",
    "OVERLAY_SERIES_DESCRIPTION",
    "REPORT_SERIES_DESCRIPTION",
    "SEGMENTATION_SERIES_DESCRIPTION",
    "SUMMARY_SERIES_DESCRIPTION",
    "AlgorithmInfo",
    "FindingScore",
    "build_findings_report",
    "build_heatmap_overlay",
    "build_not_analysed_report",
    "build_probability_segmentation",
    "build_region_annotations",
    "build_summary_overlay",
]
