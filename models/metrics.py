"""Classification metrics for multi-label chest X-ray models: AUROC, operating points, calibration.

All functions take numpy arrays: ``y_true`` holds 0/1 (or bool) ground truth, ``scores`` the model's
probabilities, one row per image and, for the per-label functions, one column per label.

- **AUROC** is the Mann-Whitney statistic computed from ranks: with ``R+`` the sum of the
  positives' ranks among all scores (tied scores share their average rank),
  ``AUC = (R+ - n+(n+ + 1)/2) / (n+ n-)``. A tie between a positive and a negative counts one half,
  exactly as the trapezoidal ROC area does.
- **Bootstrap confidence intervals** resample *images* with replacement (the same resamples for
  every label, so intervals of different labels are paired), recompute the AUC and take the
  percentile interval. Resample ``b`` draws ``rng.integers(0, n, n)`` from
  ``numpy.random.default_rng(seed)`` in order, so a result can be reproduced index by index.
  A resample that holds only one class for a label has no AUC; it is left out of that label's
  interval and counted in ``n_resamples``.
- **Operating points**: an image is called positive when ``score >= threshold``.
- **Expected calibration error** uses ``n_bins`` equal-width bins over [0, 1]: bin ``k`` holds
  scores in ``[k/n_bins, (k+1)/n_bins)``, the last bin also holds 1.0. ECE is
  ``sum_k (n_k / N) |mean(y in k) - mean(score in k)|``: the gap between observed frequency and
  predicted probability, weighted by how many images fall in each bin. For multi-label models each
  label is its own binary problem.
"""

import csv
import gzip
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.card import LabelSpec

FloatArray = npt.NDArray[np.float64]
DEFAULT_THRESHOLD = 0.5
DEFAULT_BINS = 10
NO_FINDING = "No Finding"
_CHUNK = 64  # bootstrap resamples evaluated together


def _as_binary(y_true: npt.ArrayLike, name: str = "y_true") -> npt.NDArray[np.bool_]:
    values = np.asarray(y_true)
    if values.dtype == np.bool_:
        return values
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return values.astype(np.bool_)


def _as_scores(scores: npt.ArrayLike, shape: tuple[int, ...]) -> FloatArray:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"scores have shape {values.shape}, labels {shape}")
    if not np.isfinite(values).all():
        raise ValueError("scores hold NaN or infinity")
    return values


def _check_pair(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    truth = _as_binary(y_true)
    if truth.ndim != 1:
        raise ValueError(f"expected 1-D labels, got shape {truth.shape}")
    return truth, _as_scores(scores, truth.shape)


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """1-based ranks of a 1-D array; tied values all get the mean of the ranks they span."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"expected a 1-D array, got shape {data.shape}")
    order = np.argsort(data, kind="mergesort")
    ordered = data[order]
    # Start of each run of equal values in sorted order, and its length.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, data.size])
    mean_rank = starts + (counts + 1) / 2.0  # ranks starts+1 .. starts+counts
    ranks = np.empty(data.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def roc_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of one label (rank statistic; ties count one half).

    Raises ValueError when ``y_true`` holds only one class (the AUC is undefined).
    """
    truth, values = _check_pair(y_true, scores)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positive, {n_neg} negative")
    rank_sum = float(average_ranks(values)[truth].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


@dataclass(frozen=True)
class LabelAUROC:
    """One label's AUROC with its bootstrap percentile interval (NaN bounds without bootstrap)."""

    label: str
    auc: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int
    n_resamples: int
    n_skipped: int  # resamples with one class only, left out of the interval


def _weighted_auc_rows(
    tie_starts: npt.NDArray[np.intp],
    positive: npt.NDArray[np.bool_],
    weights: FloatArray,
) -> FloatArray:
    """AUC for each row of ``weights`` (counts of each image, in score order); NaN if one class.

    Equal to :func:`roc_auc` on the resampled data: within the sorted scores, a positive beats the
    negatives in lower tie groups and half of those in its own group.
    """
    pos = np.where(positive, weights, 0.0)
    neg = weights - pos
    pos_groups = np.add.reduceat(pos, tie_starts, axis=1)
    neg_groups = np.add.reduceat(neg, tie_starts, axis=1)
    below = np.cumsum(neg_groups, axis=1) - neg_groups
    wins = (pos_groups * (below + 0.5 * neg_groups)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: FloatArray = np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)
    return result


def bootstrap_resample_counts(n: int, n_resamples: int, seed: int) -> Iterable[FloatArray]:
    """Chunks ``[k, n]`` of how often each image is drawn, resample by resample (see module doc)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        size = min(_CHUNK, n_resamples - done)
        counts = np.empty((size, n), dtype=np.float64)
        for row in range(size):
            counts[row] = np.bincount(rng.integers(0, n, n), minlength=n)
        done += size
        yield counts


def auroc_per_label(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    labels: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[LabelAUROC]:
    """AUROC of each column with a percentile bootstrap interval (``n_bootstrap=0``: none).

    ``y_true`` and ``scores`` are ``[N, L]``; ``labels`` names the ``L`` columns. A label with one
    class only has AUC NaN.
    """
    truth = _as_binary(y_true)
    if truth.ndim != 2 or truth.shape[1] != len(labels):
        raise ValueError(f"y_true must be [N, {len(labels)}], got {truth.shape}")
    values = _as_scores(scores, truth.shape)
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    n = truth.shape[0]
    orders = [np.argsort(values[:, j], kind="mergesort") for j in range(len(labels))]
    tie_starts = []
    for j, order in enumerate(orders):
        ordered = values[order, j]
        tie_starts.append(np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]))
    samples: list[list[FloatArray]] = [[] for _ in labels]
    for counts in bootstrap_resample_counts(n, n_bootstrap, seed):
        for j, order in enumerate(orders):
            samples[j].append(_weighted_auc_rows(tie_starts[j], truth[order, j], counts[:, order]))
    tail = 100.0 * (1.0 - confidence) / 2.0
    results = []
    for j, label in enumerate(labels):
        n_pos = int(truth[:, j].sum())
        try:
            auc = roc_auc(truth[:, j], values[:, j])
        except ValueError:
            auc = float("nan")
        drawn = np.concatenate(samples[j]) if samples[j] else np.empty(0)
        valid = drawn[np.isfinite(drawn)]
        low, high = float("nan"), float("nan")
        if valid.size:
            low, high = (float(v) for v in np.percentile(valid, [tail, 100.0 - tail]))
        results.append(
            LabelAUROC(
                label=label,
                auc=auc,
                ci_low=low,
                ci_high=high,
                n_positive=n_pos,
                n_negative=n - n_pos,
                n_resamples=n_bootstrap,
                n_skipped=int(drawn.size - valid.size),
            )
        )
    return results


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold (positive means ``score >= threshold``)."""

    threshold: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN); NaN without positives."""
        positives = self.true_positive + self.false_negative
        return self.true_positive / positives if positives else float("nan")

    @property
    def specificity(self) -> float:
        """TN / (TN + FP); NaN without negatives."""
        negatives = self.true_negative + self.false_positive
        return self.true_negative / negatives if negatives else float("nan")


def operating_point(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> OperatingPoint:
    """Sensitivity and specificity of one label at ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside [0, 1]")
    truth, values = _check_pair(y_true, scores)
    called = values >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        true_positive=int((called & truth).sum()),
        false_positive=int((called & ~truth).sum()),
        true_negative=int((~called & ~truth).sum()),
        false_negative=int((~called & truth).sum()),
    )


def thresholds_for(
    labels: Sequence[str],
    source: Mapping[str, float] | Sequence[LabelSpec] | float | None = None,
    *,
    default: float = DEFAULT_THRESHOLD,
) -> dict[str, float]:
    """One threshold per label, from a card's LabelSpecs, a ``{label: threshold}`` dict or a number.

    Labels the source does not mention (or a LabelSpec with ``threshold: null``) get ``default``.
    """
    if source is None:
        known: Mapping[str, float | None] = {}
    elif isinstance(source, int | float):
        known = dict.fromkeys(labels, float(source))
    elif isinstance(source, Mapping):
        known = source
    else:
        known = {spec.name: spec.threshold for spec in source}
    chosen = {}
    for label in labels:
        value = known.get(label)
        chosen[label] = default if value is None else float(value)
    return chosen


def operating_points(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | Sequence[LabelSpec] | float | None = None,
) -> dict[str, OperatingPoint]:
    """:func:`operating_point` for each column of ``[N, L]`` arrays (see :func:`thresholds_for`)."""
    truth = _as_binary(y_true)
    if truth.ndim != 2 or truth.shape[1] != len(labels):
        raise ValueError(f"y_true must be [N, {len(labels)}], got {truth.shape}")
    values = _as_scores(scores, truth.shape)
    chosen = thresholds_for(labels, thresholds)
    return {
        label: operating_point(truth[:, j], values[:, j], chosen[label])
        for j, label in enumerate(labels)
    }


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean predicted probability and observed frequency (NaN for empty bins)."""

    edges: FloatArray
    counts: npt.NDArray[np.int64]
    mean_score: FloatArray
    frequency: FloatArray


def reliability_bins(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Equal-width bins over [0, 1] (last bin closed); scores must lie in [0, 1]."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    truth, values = _check_pair(y_true, scores)
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError("calibration needs probabilities in [0, 1]")
    index = np.minimum((values * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.int64)
    score_sums = np.bincount(index, weights=values, minlength=n_bins)
    positive_sums = np.bincount(index, weights=truth.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.where(counts > 0, score_sums / np.maximum(counts, 1), np.nan)
        frequency = np.where(counts > 0, positive_sums / np.maximum(counts, 1), np.nan)
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1),
        counts=counts,
        mean_score=mean_score,
        frequency=frequency,
    )


def expected_calibration_error(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, *, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE over equal-width bins (see module doc); 0 is perfect calibration."""
    bins = reliability_bins(y_true, scores, n_bins=n_bins)
    total = int(bins.counts.sum())
    if total == 0:
        raise ValueError("no scores to calibrate")
    filled = bins.counts > 0
    gaps = np.abs(bins.frequency[filled] - bins.mean_score[filled])
    return float((bins.counts[filled] * gaps).sum() / total)


@dataclass(frozen=True)
class LabelReport:
    """Everything ``radlight models evaluate`` prints for one label."""

    auroc: LabelAUROC
    operating_point: OperatingPoint
    ece: float


def evaluate(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    labels: Sequence[str],
    *,
    thresholds: Mapping[str, float] | Sequence[LabelSpec] | float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = DEFAULT_BINS,
) -> list[LabelReport]:
    """AUROC with CI, the operating point and the ECE of every label."""
    truth = _as_binary(y_true)
    aurocs = auroc_per_label(
        truth, scores, labels, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
    )
    values = _as_scores(scores, truth.shape)
    points = operating_points(truth, values, labels, thresholds)
    return [
        LabelReport(
            auroc=aurocs[j],
            operating_point=points[label],
            ece=expected_calibration_error(truth[:, j], values[:, j], n_bins=n_bins),
        )
        for j, label in enumerate(labels)
    ]


def open_text(path: Path) -> io.TextIOWrapper:
    """A CSV file for reading as text, gunzipped when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="")


def read_nih_labels(
    path: Path, images: Sequence[str], labels: Sequence[str]
) -> npt.NDArray[np.bool_]:
    """``[N, L]`` ground truth from NIH ``Data_Entry_2017*.csv[.gz]`` for ``images`` in order.

    ``Finding Labels`` is ``|``-separated; ``No Finding`` means none. An image missing from the
    table is a ValueError (a silent negative would bias every metric).
    """
    wanted = {name: i for i, name in enumerate(images)}
    column = {label: j for j, label in enumerate(labels)}
    truth = np.zeros((len(images), len(labels)), dtype=np.bool_)
    seen = np.zeros(len(images), dtype=np.bool_)
    with open_text(Path(path)) as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"Image Index", "Finding Labels"} <= set(
            reader.fieldnames
        ):
            raise ValueError(f"{path}: needs columns 'Image Index' and 'Finding Labels'")
        for row in reader:
            i = wanted.get(row["Image Index"])
            if i is None:
                continue
            seen[i] = True
            for finding in row["Finding Labels"].split("|"):
                j = column.get(finding.strip())
                if j is not None:
                    truth[i, j] = True
    if not seen.all():
        missing = [images[i] for i in np.flatnonzero(~seen)[:5]]
        raise ValueError(f"{int((~seen).sum())} images have no labels in {path}, e.g. {missing}")
    return truth
