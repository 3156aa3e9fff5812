"""Fidelity check: a model reproduces a reference it wrote itself, and a perturbed one is caught.

The real jrzech/reproduce-chexnet weights are not available here, so the passing case uses
reference files made by random-weight models; the real reference is only read (and, against an
untrained model, must fail).
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.export import build_tiny_classifier, build_untrained_chexnet
from models.labels import CHEST_XRAY14_LABELS
from models.registry import ModelEntry, ModelRegistry
from models.verify import (
    PredictionTable,
    compare_predictions,
    predict_files,
    read_predictions,
    verify_model,
    write_predictions,
)

PERTURBED_IMAGE = "00013122_000.png"
PERTURBED_LABEL = "Mass"


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLIGHT_")}
    env.update(RADLIGHT_DATA_DIR=str(data_dir), RADLIGHT_LOG_JSON="false")
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radlight", "models", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tiny_installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], ModelEntry]:
    data = tmp_path_factory.mktemp("verify-data")
    built = build_tiny_classifier(tmp_path_factory.mktemp("tiny-build"), seed=3)
    entry = ModelRegistry(data / "models").install(built.onnx_path, built.card)
    return _env(data), entry


@pytest.fixture(scope="module")
def tiny_reference(
    tiny_installed: tuple[dict[str, str], ModelEntry],
    tmp_path_factory: pytest.TempPathFactory,
    assets_dir: Path,
) -> Path:
    env, entry = tiny_installed
    out = tmp_path_factory.mktemp("reference") / "tiny.csv"
    images = str(assets_dir / "nih_cxr14" / "images")
    model = f"{entry.name}:{entry.version}"
    done = _cli(env, "verify", "--model", model, "--images", images, "--write-reference", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 34 images x 14 labels" in done.stdout
    return out


def _verify(
    tiny_installed: tuple[dict[str, str], ModelEntry],
    assets_dir: Path,
    reference: Path,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    env, entry = tiny_installed
    images = str(assets_dir / "nih_cxr14" / "images")
    return _cli(
        env,
        "verify",
        "--model",
        entry.name,
        "--images",
        images,
        "--reference",
        str(reference),
        *extra,
    )


def test_model_reproduces_its_own_reference(
    tiny_installed: tuple[dict[str, str], ModelEntry], tiny_reference: Path, assets_dir: Path
) -> None:
    table = read_predictions(tiny_reference)
    assert len(table.images) == 34
    assert table.labels == CHEST_XRAY14_LABELS
    assert np.isfinite(table.scores).all()
    done = _verify(tiny_installed, assets_dir, tiny_reference)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: max |diff| 0," in done.stdout
    assert done.stdout.count("max |diff| 0 ") == 14  # every label, exactly


def test_a_perturbed_value_fails_and_is_named(
    tiny_installed: tuple[dict[str, str], ModelEntry],
    tiny_reference: Path,
    assets_dir: Path,
    tmp_path: Path,
) -> None:
    table = read_predictions(tiny_reference)
    scores = table.scores.copy()
    i, j = table.images.index(PERTURBED_IMAGE), table.labels.index(PERTURBED_LABEL)
    scores[i, j] += 0.01
    perturbed = tmp_path / "perturbed.csv"
    write_predictions(perturbed, PredictionTable(table.images, table.labels, scores))
    done = _verify(tiny_installed, assets_dir, perturbed)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: max |diff| 0.01," in done.stdout
    assert f"beyond tolerance: {PERTURBED_IMAGE} {PERTURBED_LABEL}" in done.stdout
    assert done.stdout.count("beyond tolerance") == 1
    loose = _verify(tiny_installed, assets_dir, perturbed, "--tolerance", "0.02")
    assert loose.returncode == 0, loose.stdout


def test_columns_are_matched_by_name_and_rows_by_image(
    tiny_installed: tuple[dict[str, str], ModelEntry],
    tiny_reference: Path,
    assets_dir: Path,
    tmp_path: Path,
) -> None:
    """A reference with a few images, reversed label columns without the prob_ prefix."""
    table = read_predictions(tiny_reference)
    rows = [table.images.index(name) for name in sorted(table.images)[::7]]
    labels = list(table.labels)[::-1][:9]
    reordered = tmp_path / "reordered.csv"
    with reordered.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", *labels])
        for i in rows:
            writer.writerow(
                [
                    table.images[i],
                    *(repr(float(table.scores[i, table.labels.index(lb)])) for lb in labels),
                ]
            )
    done = _verify(tiny_installed, assets_dir, reordered)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on {len(rows)} images" in done.stdout
    assert "not in the reference (unchecked)" in done.stdout


def test_untrained_model_does_not_reproduce_the_jrzech_reference(
    tiny_installed: tuple[dict[str, str], ModelEntry], assets_dir: Path
) -> None:
    """The real reference file is read as is; a random-weight model is far from it."""
    reference = assets_dir / "reference" / "chexnet_jrzech_preds_subset.csv"
    table = read_predictions(reference)
    assert (len(table.images), table.labels) == (34, CHEST_XRAY14_LABELS)
    done = _verify(tiny_installed, assets_dir, reference)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout


def test_missing_images_or_labels_are_errors_not_passes(
    tiny_installed: tuple[dict[str, str], ModelEntry], assets_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("image_index,prob_Mass\nnot-there.png,0.5\n")
    done = _verify(tiny_installed, assets_dir, missing)
    assert done.returncode == 2
    assert "not-there.png" in done.stderr
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"image_index,prob_Fracture\n{PERTURBED_IMAGE},0.5\n")
    done = _verify(tiny_installed, assets_dir, unknown)
    assert done.returncode == 2
    assert "Fracture" in done.stderr


def test_compare_and_round_trip_without_a_model(tmp_path: Path) -> None:
    scores = np.array([[0.123456789, 0.5], [1e-7, 0.999999]], dtype=np.float32).astype(np.float64)
    table = PredictionTable(("a.png", "b.png"), ("A", "B"), scores)
    path = tmp_path / "t.csv"
    write_predictions(path, table)
    again = read_predictions(path)
    assert again.images == table.images
    assert again.labels == table.labels
    assert np.array_equal(again.scores.astype(np.float32), scores.astype(np.float32))
    shifted = PredictionTable(("b.png", "a.png"), ("B",), np.array([[0.999999 + 2e-3], [0.5]]))
    report = compare_predictions(table, shifted, tolerance=1e-3)
    assert not report.passed
    assert (report.worst.label, report.worst.image) == ("B", "b.png")
    assert report.max_abs_diff == pytest.approx(2e-3, abs=1e-6)
    assert report.unchecked_labels == ("A",)
    with pytest.raises(ValueError, match="twice"):
        PredictionTable(("a.png", "a.png"), ("A",), np.zeros((2, 1)))


def test_untrained_densenet_reproduces_its_own_predictions(
    tmp_path: Path, assets_dir: Path
) -> None:
    """The real architecture (random weights) through verify_model, in process, on 4 images."""
    built = build_untrained_chexnet(tmp_path / "build", seed=5)
    entry = ModelRegistry(tmp_path / "models").install(built.onnx_path, built.card)
    images = assets_dir / "nih_cxr14" / "images"
    names = ("00001369_000.png", "00002578_000.png", "00013122_000.png", "00026911_000.png")
    zeros = PredictionTable(names, entry.card.label_names, np.zeros((4, 14)))
    assert not verify_model(entry, images, zeros).passed  # zeros are not its predictions
    reference = tmp_path / "ref.csv"
    write_predictions(reference, predict_files(entry, [images / n for n in names], batch_size=3))
    report = verify_model(entry, images, read_predictions(reference), batch_size=2)
    assert report.passed
    assert report.max_abs_diff < 1e-6  # batch size 2 vs 3: same scores to float32 precision
    assert len(report.extra_images) == 30
