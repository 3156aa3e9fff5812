"""Result builders: pure functions from arrays and source datasets to highdicom objects.

``build_heatmap_overlay`` makes an RGB Secondary Capture per finding heatmap, and
``build_findings_report`` a TID 1500 Comprehensive SR with every image's finding probabilities.
Neither touches the database, the store or the network; the pipeline writes what they return.
"""

from workers.results.common import AlgorithmInfo, FindingScore
from workers.results.sc import OVERLAY_SERIES_DESCRIPTION, build_heatmap_overlay
from workers.results.sr import REPORT_SERIES_DESCRIPTION, build_findings_report

__all__ = [
    "OVERLAY_SERIES_DESCRIPTION",
    "REPORT_SERIES_DESCRIPTION",
    "AlgorithmInfo",
    "FindingScore",
    "build_findings_report",
    "build_heatmap_overlay",
]
