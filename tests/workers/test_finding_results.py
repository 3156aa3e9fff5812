"""The CAM stage (workers.analysis._finding_results) against the way it worked before: a full-size
heatmap made for every present finding and its region found on it (the oracle). Regions must be
the same; full-size heatmaps are kept for exactly the findings the result builders draw."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.cam import cam_to_image
from models.export import BuiltModel
from models.preprocess import CropGeometry
from models.registry import ModelEntry, ModelRegistry
from workers.analysis import AnalysedImage, ResultOptions, _finding_results
from workers.imaging import load_frontal_chest
from workers.results.regions import heatmap_region


@pytest.fixture(scope="module")
def entry(tiny_model: BuiltModel, tmp_path_factory: pytest.TempPathFactory) -> ModelEntry:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    return registry.install(tiny_model.onnx_path, tiny_model.card)


@pytest.fixture(scope="module")
def image(real_dicom_files: list[Path]) -> AnalysedImage:
    source = pydicom.dcmread(real_dicom_files[0])
    return AnalysedImage(source, load_frontal_chest(source))


def _outputs(seed: int, labels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.2, 1.0, labels).astype(np.float32)
    cams = rng.standard_normal((labels, 7, 7)).astype(np.float32)
    return probabilities, cams


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "options",
    [ResultOptions(), ResultOptions(max_overlays_per_image=1), ResultOptions(segmentation=True)],
    ids=["three-overlays", "one-overlay", "segmentation"],
)
def test_regions_are_the_full_maps_and_drawn_findings_keep_their_map(
    entry: ModelEntry, image: AnalysedImage, options: ResultOptions, seed: int
) -> None:
    labels = len(entry.card.labels)
    probabilities, cams = _outputs(seed, labels)
    rows, cols = image.display.shape
    geometry = CropGeometry((rows, cols), (224, 224), (0, 0), 224)
    findings = _finding_results(entry, image, probabilities, cams, geometry, options)

    present = findings.present()
    assert 0 < len(present) < labels
    drawn = present if options.segmentation else present[: options.max_overlays_per_image]
    for k, finding in enumerate(findings.findings):
        assert finding.score.label == entry.card.labels[k].name
        assert finding.score.probability == float(probabilities[k])
        if not finding.present:
            assert finding.heatmap is None
            assert finding.region is None
            continue
        full = cam_to_image(cams[k], geometry, (rows, cols))
        assert finding.region == heatmap_region(full)
        if finding in drawn:
            assert finding.heatmap is not None
            np.testing.assert_array_equal(finding.heatmap, full)
        else:
            assert finding.heatmap is None
