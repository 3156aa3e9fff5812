"""The real pneumonia demo model, built from PyPI once per machine (tests/pneumonia_build.py):
its sha256, the card's golden figures, its Grad-CAM output, and DICOM conversion that keeps the
pixels the model was checked on.
"""

import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.pixels import to_display_uint8
from models.checksum import sha256_file
from models.export import BuiltModel
from models.pneumonia_demo import (
    GOLDEN_PROBABILITIES,
    GOLDEN_TOLERANCE,
    ONNX_SHA256,
    OUTPUTS,
    PREPROCESSING,
    evaluate_bundled,
    load_gray_jpeg,
)
from models.preprocess import prepare_image
from models.registry import ModelRegistry
from models.runtime import HeatmapModel
from tests.conftest import REPO_ROOT
from tests.models.test_pneumonia_runtime import readme_recipe
from tests.pneumonia_build import build_demo_once, demo_build_dir, jpeg_to_dicom

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def demo() -> tuple[BuiltModel, Path]:
    return build_demo_once()


def test_build_gives_the_reference_file(demo: tuple[BuiltModel, Path], tmp_path: Path) -> None:
    built, _ = demo
    assert sha256_file(built.onnx_path) == ONNX_SHA256
    assert built.card.sha256 == ONNX_SHA256
    entry = ModelRegistry(tmp_path / "models").install(built.onnx_path, built.card)
    assert (entry.name, entry.version) == ("pneumonia-xception-demo", "0.3.0")


def test_golden_figures_are_reproduced(demo: tuple[BuiltModel, Path]) -> None:
    built, images = demo
    figures = evaluate_bundled(built.onnx_path, built.card.sha256, images)
    assert sorted(row.file for row in figures.rows) == sorted(GOLDEN_PROBABILITIES)
    for row in figures.rows:
        assert row.probability == pytest.approx(GOLDEN_PROBABILITIES[row.file], abs=1e-4)
    assert figures.correct == 13
    assert round(figures.auroc, 3) == 0.906
    assert figures.max_golden_difference < GOLDEN_TOLERANCE


def test_gradcam_is_a_5x5_map_per_image(demo: tuple[BuiltModel, Path]) -> None:
    built, images = demo
    model = HeatmapModel.load(built.onnx_path, sha256=built.card.sha256, names=OUTPUTS)
    files = [images / "NORMAL2-IM-1430-0001.jpeg", images / "person1946_bacteria_4874.jpeg"]
    batch = np.stack([prepare_image(load_gray_jpeg(f), PREPROCESSING).tensor for f in files])
    inference = model.infer(batch)
    assert inference.heatmaps.shape == (2, 1, 5, 5)
    assert inference.probabilities[:, 0] == pytest.approx([0.0329, 0.9995], abs=1e-3)
    (cam_signed,) = model.session.run(["cam_signed"], {"input": batch})
    assert np.allclose(np.maximum(cam_signed, 0), inference.heatmaps[:, 0], atol=1e-6)
    assert inference.heatmaps[1].max() > 0.1  # the confident pneumonia case lights up


def test_dicom_conversion_keeps_the_pixels_the_model_sees(demo: tuple[BuiltModel, Path]) -> None:
    _, images = demo
    for jpeg in sorted(images.glob("*.jpeg")):
        ds = jpeg_to_dicom(
            jpeg, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", instance_number=1
        )
        ds = pydicom.dcmread(BytesIO(_encode(ds)))
        display = to_display_uint8(ds)
        assert np.array_equal(display, load_gray_jpeg(jpeg))
        tensor = prepare_image(display, PREPROCESSING).tensor
        assert np.array_equal(tensor, readme_recipe(load_gray_jpeg(jpeg)))


def _radlight(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radlight", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_evaluate_demo_command_prints_the_figures(tmp_path: Path) -> None:
    env = {**os.environ, "RADLIGHT_DATA_DIR": str(tmp_path / "data")}
    build = ("models", "build", "pneumonia-demo", "--build-dir", str(demo_build_dir()))
    unmigrated = _radlight(env, *build)
    assert unmigrated.returncode == 1
    assert "run `radlight db upgrade`" in unmigrated.stderr
    assert _radlight(env, "db", "upgrade").returncode == 0
    built = _radlight(env, *build)
    assert built.returncode == 0, built.stderr
    assert "pneumonia-xception-demo 0.3.0 is already installed" in built.stdout
    assert "route pediatric-pneumonia-demo (CR, DX)" in built.stdout
    result = _radlight(env, "models", "evaluate-demo", "--build-dir", str(demo_build_dir()))
    assert result.returncode == 0, result.stderr
    assert "accuracy 0.8125 (13/16), AUROC 0.906" in result.stdout
    words = " ".join(result.stdout.split())
    assert "NORMAL2-IM-1438-0001.jpeg NORMAL 0.9533 0.9533 PNEUMONIA" in words


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
