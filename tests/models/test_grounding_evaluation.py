"""`radlight models evaluate-grounding` and `evaluate-lungs` as a user runs them, on a few of the
real NIH boxed images and Montgomery masks."""

import csv
import json
import os
from pathlib import Path

import pytest

from models.export import build_tiny_classifier
from models.registry import ModelRegistry
from radlight.cli import build_parser
from radlight.settings import Settings
from tests.peers import radlight


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLIGHT_")}
    env.update(RADLIGHT_DATA_DIR=str(data_dir), RADLIGHT_LOG_JSON="false")
    return env


def test_evaluate_grounding_on_a_subset(assets_dir: Path, tmp_path: Path) -> None:
    built = build_tiny_classifier(tmp_path / "build")
    ModelRegistry(tmp_path / "data" / "models").install(built.onnx_path, built.card)
    out = tmp_path / "figures.json"
    stdout = radlight(
        _env(tmp_path / "data"),
        "models",
        "evaluate-grounding",
        "--model",
        "tiny-test-classifier",
        "--assets",
        str(assets_dir),
        "--set",
        "nih_cxr14",
        "--limit",
        "6",
        "--json",
        str(out),
    )
    assert "nih_cxr14: 6 box sets on 6 images" in stdout
    assert stdout.startswith("classifier: tiny-test-classifier")
    figures = json.loads(out.read_text())
    rows = figures["sets"]["nih_cxr14"]["results"]
    assert {(r["method"], r["wording"]) for r in rows} == {
        (m, w) for m in ("cam-prior", "cam", "prior", "centre") for w in ("finding", "described")
    }
    for row in rows:
        assert row["n_cases"] == 6
        assert row["n_tune"] + row["n_report"] == 6
        assert min(row["n_tune"], row["n_report"]) > 0
        for key in ("pointing_hit_rate", "report_mean_iou", "report_mean_dice", "threshold"):
            assert 0.0 <= row[key] <= 1.0
    # The centre baseline's peak is the image centre: a hit exactly when a box holds it.
    with (assets_dir / "nih_cxr14" / "bboxes.csv").open() as handle:
        boxes = sorted(csv.DictReader(handle), key=lambda r: (r["image_index"], r["finding_label"]))
    centre = 512.0  # the 256-pixel grid's peak pixel (128, 128) has its centre at 514 on 1024
    expected = sum(
        float(b["x"]) <= centre + 2 < float(b["x"]) + float(b["w"])
        and float(b["y"]) <= centre + 2 < float(b["y"]) + float(b["h"])
        for b in boxes[:6]
    )
    centre_row = next(r for r in rows if r["method"] == "centre" and r["wording"] == "finding")
    assert centre_row["pointing_hit_rate"] == pytest.approx(expected / 6)


def _run_in_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str
) -> tuple[int, str, str]:
    """The same command in this process (parser and handler, no logging set-up): faster."""
    parsed = build_parser().parse_args(["models", *args])
    code = parsed.func(parsed, Settings(data_dir=tmp_path))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_grounding_without_a_model_scores_the_prior_and_names_a_missing_set(
    assets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _run_in_process(
        capsys,
        tmp_path,
        "evaluate-grounding",
        "--assets",
        str(assets_dir),
        "--set",
        "nih_cxr14",
        "--limit",
        "6",
    )
    assert code == 0
    assert stdout.startswith("classifier: no classifier")
    methods = {line.split()[0] for line in stdout.splitlines()[4:] if line.strip()}
    assert methods == {"prior", "centre"}
    code, _, stderr = _run_in_process(
        capsys, tmp_path, "evaluate-grounding", "--assets", str(tmp_path), "--set", "nope"
    )
    assert code == 2
    assert "nope" in stderr
    assert "bboxes.csv" in stderr


def test_evaluate_lungs_on_a_subset(
    assets_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _run_in_process(
        capsys,
        tmp_path,
        "evaluate-lungs",
        "--masks",
        str(assets_dir / "montgomery_lungs"),
        "--limit",
        "3",
    )
    assert code == 0
    assert stdout.startswith("3 images of ")
    mean = float(stdout.split("mean ")[1].split(",")[0])
    assert 0.75 <= mean <= 1.0
