"""`radlight models evaluate` as a user runs it, on the real CheXNet predictions and NIH labels."""

import json
import os
import subprocess
import sys
from pathlib import Path

from models.card import ModelCard
from models.export import build_tiny_classifier
from models.registry import ModelRegistry


def _evaluate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLIGHT_")}
    env.update(RADLIGHT_DATA_DIR=str(data_dir), RADLIGHT_LOG_JSON="false")
    return subprocess.run(
        [sys.executable, "-m", "radlight", "models", "evaluate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[2:]}


def test_evaluate_prints_the_golden_aucs_with_intervals(assets_dir: Path, tmp_path: Path) -> None:
    done = _evaluate(
        tmp_path,
        "--predictions",
        str(assets_dir / "reference" / "chexnet_jrzech_preds_test_split.csv.gz"),
        "--labels",
        str(assets_dir / "labels_full" / "Data_Entry_2017_v2020.csv.gz"),
        "--bootstrap",
        "20",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("22433 images; AUROC 95% CI from 20 bootstrap resamples")
    rows = _rows(done.stdout)
    # label: positives, AUROC, [low, high], threshold, sensitivity, specificity, ECE
    assert rows["Atelectasis"][:2] == ["2423", "0.8180"]
    assert rows["Hernia"][:2] == ["42", "0.9175"]
    low, high = float(rows["Hernia"][2].strip("[,")), float(rows["Hernia"][3].rstrip("]"))
    assert low < 0.9175 < high
    assert rows["Hernia"][4] == "0.50"


def test_evaluate_uses_a_cards_thresholds(assets_dir: Path, tmp_path: Path) -> None:
    built = build_tiny_classifier(tmp_path / "build")
    data = built.card.model_dump(mode="json")
    data["labels"] = [
        {**label, "threshold": 0.05 if label["name"] == "Effusion" else None}
        for label in data["labels"]
    ]
    card = ModelCard.model_validate_json(json.dumps(data))
    entry = ModelRegistry(tmp_path / "data" / "models").install(built.onnx_path, card)
    done = _evaluate(
        tmp_path / "data",
        "--predictions",
        str(assets_dir / "reference" / "chexnet_jrzech_preds_subset.csv"),
        "--labels",
        str(assets_dir / "labels_full" / "Data_Entry_2017_v2020.csv.gz"),
        "--bootstrap",
        "10",
        "--model",
        f"{entry.name}:{entry.version}",
        "--threshold",
        "0.4",
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert rows["Effusion"][4] == "0.05"  # the card's
    assert rows["Mass"][4] == "0.40"  # no threshold on the card: --threshold
    assert len(rows) == 15  # 14 labels and the mean


def test_evaluate_refuses_predictions_without_labels(tmp_path: Path, assets_dir: Path) -> None:
    predictions = tmp_path / "p.csv"
    predictions.write_text("image_index,prob_Mass\nnot-an-nih-image.png,0.5\n")
    done = _evaluate(
        tmp_path,
        "--predictions",
        str(predictions),
        "--labels",
        str(assets_dir / "labels_full" / "Data_Entry_2017_v2020.csv.gz"),
    )
    assert done.returncode == 2
    assert "no labels" in done.stderr
