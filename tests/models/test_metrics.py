"""Metrics: AUROC against a brute-force count and the real CheXNet golden file, bootstrap, rates, ECE."""

import csv
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.card import CodedConcept, LabelSpec
from models.labels import CHEST_XRAY14_LABELS
from models.metrics import (
    auroc_per_label,
    average_ranks,
    evaluate,
    expected_calibration_error,
    operating_point,
    operating_points,
    read_nih_labels,
    reliability_bins,
    roc_auc,
    thresholds_for,
)
from models.verify import read_predictions


def brute_force_auc(y: npt.NDArray[np.int64], s: npt.NDArray[np.float64]) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), over every pair."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_average_ranks_share_ties() -> None:
    assert average_ranks([0.3, 0.1, 0.3, 0.2, 0.3]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert average_ranks([5.0]).tolist() == [1.0]


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    # Scores on a coarse grid, so many positives tie with negatives.
    s = np.round(rng.random(n) * 4) / 4 + 0.2 * y * rng.random(n).round(1)
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_auc_hand_cases() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # One tie between a positive and a negative, 2 wins out of 4 pairs otherwise: (3 + 0.5) / 4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.9]) == pytest.approx(3.5 / 4)
    assert roc_auc(np.array([False, True]), [0.2, 0.1]) == 0.0


def test_auc_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])


def test_golden_chexnet_aucs(assets_dir: Path) -> None:
    """The real jrzech CheXNet test-split predictions give its published per-label AUCs."""
    started = time.perf_counter()
    table = read_predictions(assets_dir / "reference" / "chexnet_jrzech_preds_test_split.csv.gz")
    truth = read_nih_labels(
        assets_dir / "labels_full" / "Data_Entry_2017_v2020.csv.gz", table.images, table.labels
    )
    results = auroc_per_label(truth, table.scores, table.labels, n_bootstrap=0)
    elapsed = time.perf_counter() - started
    with (assets_dir / "reference" / "chexnet_jrzech_aucs.csv").open(newline="") as handle:
        expected = {row["label"]: float(row["auc"]) for row in csv.DictReader(handle)}
    assert table.scores.shape == (22433, 14)
    assert table.labels == CHEST_XRAY14_LABELS
    assert [r.label for r in results] == list(expected)
    for result in results:
        assert round(result.auc, 4) == round(expected[result.label], 4), result
        assert result.auc == pytest.approx(expected[result.label], abs=1e-9)
    positives = {r.label: r.n_positive for r in results}
    assert positives["Hernia"] == 42
    assert positives["Infiltration"] == 3944
    assert elapsed < 10, elapsed


def _loop_bootstrap(
    y: npt.NDArray[np.int64], s: npt.NDArray[np.float64], n_resamples: int, seed: int
) -> tuple[list[float], int]:
    """The documented resampling, done the slow way: one roc_auc per resample."""
    rng = np.random.default_rng(seed)
    aucs, skipped = [], 0
    for _ in range(n_resamples):
        index = rng.integers(0, y.size, y.size)
        try:
            aucs.append(roc_auc(y[index], s[index]))
        except ValueError:
            skipped += 1
    return aucs, skipped


def test_bootstrap_matches_a_loop_over_resamples() -> None:
    rng = np.random.default_rng(3)
    n = 80
    y = np.stack([rng.integers(0, 2, n), (rng.random(n) < 0.05).astype(np.int64)], axis=1)
    y[0, 1] = 1  # the rare label has at least one positive: some resamples miss it
    s = np.round(rng.random((n, 2)) + 0.3 * y, 1)  # ties within each label
    results = auroc_per_label(y, s, ["common", "rare"], n_bootstrap=150, seed=11)
    for j, result in enumerate(results):
        aucs, skipped = _loop_bootstrap(y[:, j], s[:, j], 150, 11)
        assert result.n_skipped == skipped
        assert result.ci_low == pytest.approx(np.percentile(aucs, 2.5), abs=1e-12)
        assert result.ci_high == pytest.approx(np.percentile(aucs, 97.5), abs=1e-12)
        assert result.auc == pytest.approx(brute_force_auc(y[:, j], s[:, j]))
        assert result.ci_low <= result.auc <= result.ci_high
    assert results[1].n_skipped > 0


def test_bootstrap_is_seeded_and_configurable() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 1))
    s = rng.random((200, 1)) + 0.5 * y
    first = auroc_per_label(y, s, ["x"], n_bootstrap=40, seed=1)
    again = auroc_per_label(y, s, ["x"], n_bootstrap=40, seed=1)
    other = auroc_per_label(y, s, ["x"], n_bootstrap=40, seed=2)
    narrow = auroc_per_label(y, s, ["x"], n_bootstrap=40, seed=1, confidence=0.5)
    none = auroc_per_label(y, s, ["x"], n_bootstrap=0)
    assert first == again
    assert (first[0].ci_low, first[0].ci_high) != (other[0].ci_low, other[0].ci_high)
    assert first[0].ci_low < narrow[0].ci_low <= narrow[0].ci_high < first[0].ci_high
    assert first[0].n_resamples == 40
    assert np.isnan(none[0].ci_low)
    assert np.isnan(none[0].ci_high)
    with pytest.raises(ValueError, match="confidence"):
        auroc_per_label(y, s, ["x"], confidence=1.0)


def test_operating_point_counts() -> None:
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0]
    point = operating_point(y, s, 0.5)  # score >= 0.5 is positive
    assert (point.true_positive, point.false_negative) == (2, 1)
    assert (point.false_positive, point.true_negative) == (1, 3)
    assert point.sensitivity == pytest.approx(2 / 3)
    assert point.specificity == pytest.approx(3 / 4)
    assert np.isnan(operating_point([0, 0], [0.1, 0.9], 0.5).sensitivity)
    with pytest.raises(ValueError, match="outside"):
        operating_point(y, s, 1.5)


def test_thresholds_from_card_dict_or_number() -> None:
    code = CodedConcept(value="1", scheme_designator="99X", meaning="m")
    specs = [
        LabelSpec(name="A", code=code, threshold=0.3),
        LabelSpec(name="B", code=code, threshold=None),
    ]
    assert thresholds_for(["A", "B", "C"], specs) == {"A": 0.3, "B": 0.5, "C": 0.5}
    assert thresholds_for(["A", "B"], specs, default=0.2) == {"A": 0.3, "B": 0.2}
    assert thresholds_for(["A", "B"], {"B": 0.7}) == {"A": 0.5, "B": 0.7}
    assert thresholds_for(["A", "B"], 0.6) == {"A": 0.6, "B": 0.6}
    y = np.array([[1, 1], [0, 0]])
    s = np.array([[0.35, 0.35], [0.1, 0.1]])
    points = operating_points(y, s, ["A", "B"], specs)
    assert points["A"].true_positive == 1  # 0.35 >= 0.3
    assert points["B"].true_positive == 0  # 0.35 < default 0.5


def test_expected_calibration_error_by_hand() -> None:
    # Bin [0.8, 0.9): scores 0.8, 0.8, outcomes 1, 0 -> gap |0.5 - 0.8| = 0.3, weight 2/5.
    # Bin [0.1, 0.2): score 0.1, outcome 0 -> gap 0.1, weight 1/5.
    # Last bin [0.9, 1.0] holds 1.0 as well: scores 0.95, 1.0, outcomes 1, 1 -> gap 0.025, weight 2/5.
    y = [1, 0, 0, 1, 1]
    s = [0.8, 0.8, 0.1, 0.95, 1.0]
    expected = 0.4 * 0.3 + 0.2 * 0.1 + 0.4 * 0.025
    assert expected_calibration_error(y, s, n_bins=10) == pytest.approx(expected)
    bins = reliability_bins(y, s, n_bins=10)
    assert bins.counts.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 2, 2]
    assert bins.frequency[8] == 0.5
    assert np.isnan(bins.mean_score[0])
    # All in one bin with the observed rate equal to the score: calibrated.
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == pytest.approx(0.0)
    assert expected_calibration_error([1, 0], [0.9, 0.9], n_bins=1) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error([1, 0], [1.2, 0.1])


def test_evaluate_combines_everything() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (120, 2))
    s = np.clip(0.5 * y + 0.5 * rng.random((120, 2)), 0, 1)
    reports = evaluate(y, s, ["A", "B"], thresholds={"A": 0.6}, n_bootstrap=20, seed=3)
    assert [r.auroc.label for r in reports] == ["A", "B"]
    assert reports[0].operating_point.threshold == 0.6
    assert reports[1].operating_point.threshold == 0.5
    assert reports[0].auroc.auc == pytest.approx(roc_auc(y[:, 0], s[:, 0]))
    assert reports[0].ece == pytest.approx(expected_calibration_error(y[:, 0], s[:, 0]))


def test_labels_missing_from_the_table_are_an_error(assets_dir: Path) -> None:
    labels = assets_dir / "labels_full" / "Data_Entry_2017_v2020.csv.gz"
    truth = read_nih_labels(labels, ["00000001_001.png"], ["Cardiomegaly", "Emphysema", "Mass"])
    assert truth.tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="no labels"):
        read_nih_labels(labels, ["not-an-image.png"], ["Mass"])
