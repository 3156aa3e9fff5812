"""Dynamic batching across jobs: concurrent callers share model runs and each gets its own rows."""

import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from models import batching
from models.batching import BatchingPolicy, DynamicBatcher, infer_batched, set_batching
from models.export import BuiltModel
from models.runtime import Classifier, Inference
from radlight.errors import ModelError


class GatedModel:
    """The real classifier, recording each run's batch size; its first run waits for ``release``
    so that the callers that come meanwhile queue up as they would behind a busy GPU."""

    def __init__(self, model: Classifier) -> None:
        self.model = model
        self.sizes: list[int] = []
        self.first_run_started = threading.Event()
        self.release = threading.Event()

    def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
        if not self.sizes:
            self.first_run_started.set()
            self.release.wait(timeout=30)
        self.sizes.append(int(batch.shape[0]))
        return self.model.infer(batch)


@pytest.fixture
def classifier(tiny_model: BuiltModel) -> Classifier:
    return Classifier.load(tiny_model.onnx_path, sha256=tiny_model.card.sha256)


@pytest.fixture(autouse=True)
def _no_batchers_left() -> Iterator[None]:
    yield
    batching.stop_batchers()
    set_batching(BatchingPolicy())


def _images(count: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(count, 3, 224, 224)).astype(np.float32)


def _call_concurrently(
    batcher: DynamicBatcher, batches: list[npt.NDArray[np.float32]]
) -> list[Inference | BaseException]:
    outcomes: list[Inference | BaseException | None] = [None] * len(batches)

    def call(index: int) -> None:
        try:
            outcomes[index] = batcher.infer(batches[index])
        except BaseException as exc:  # noqa: BLE001 - the test compares what each caller got
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _queue_behind_a_busy_run(
    gated: GatedModel, batcher: DynamicBatcher, batches: list[npt.NDArray[np.float32]]
) -> list[Inference | BaseException]:
    """Keep the model busy with one run while ``batches`` arrive, then let it go on."""
    blocker = threading.Thread(target=batcher.infer, args=(_images(1, 99),))
    blocker.start()
    assert gated.first_run_started.wait(timeout=30)
    outcomes: list[Inference | BaseException] = []
    caller = threading.Thread(target=lambda: outcomes.extend(_call_concurrently(batcher, batches)))
    caller.start()
    while batcher.queued() < len(batches):
        threading.Event().wait(0.005)
    gated.release.set()
    caller.join(timeout=60)
    blocker.join(timeout=60)
    return outcomes


def test_callers_waiting_behind_a_run_share_the_next_and_get_their_own_rows(
    classifier: Classifier,
) -> None:
    gated = GatedModel(classifier)
    batcher = DynamicBatcher(gated, BatchingPolicy(max_images=8))
    batches = [_images(1, seed) for seed in range(5)] + [_images(2, 5)]
    outcomes = _queue_behind_a_busy_run(gated, batcher, batches)
    # The busy run, then one run over all seven waiting images.
    assert gated.sizes == [1, 7]
    assert (batcher.runs, batcher.largest_run) == (2, 7)
    for batch, outcome in zip(batches, outcomes, strict=True):
        assert isinstance(outcome, Inference)
        alone = classifier.infer(batch)
        assert outcome.probabilities.shape == alone.probabilities.shape
        np.testing.assert_allclose(outcome.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(outcome.heatmaps, alone.heatmaps, rtol=1e-4, atol=1e-4)
    batcher.stop()


def test_a_run_takes_at_most_the_policy_s_images(classifier: Classifier) -> None:
    gated = GatedModel(classifier)
    batcher = DynamicBatcher(gated, BatchingPolicy(max_images=3))
    batches = [_images(1, seed) for seed in range(7)]
    outcomes = _queue_behind_a_busy_run(gated, batcher, batches)
    assert all(isinstance(outcome, Inference) for outcome in outcomes)
    assert gated.sizes[0] == 1
    assert sorted(gated.sizes[1:], reverse=True) == [3, 3, 1]
    batcher.stop()


def _only_the_middle_one_failed(outcomes: list[Inference | BaseException], reason: str) -> None:
    assert isinstance(outcomes[0], Inference)
    assert isinstance(outcomes[2], Inference)
    assert isinstance(outcomes[1], ValueError)
    assert reason in str(outcomes[1])


def test_a_bad_input_fails_its_own_caller_only(classifier: Classifier) -> None:
    gated = GatedModel(classifier)
    batcher = DynamicBatcher(gated, BatchingPolicy(max_images=8))
    poisoned = _images(1, 3)
    poisoned[0, 0, 0, 0] = np.nan
    batches = [_images(1, 1), poisoned, _images(1, 2)]
    outcomes = _queue_behind_a_busy_run(gated, batcher, batches)
    _only_the_middle_one_failed(outcomes, "NaN")
    last = outcomes[2]
    assert isinstance(last, Inference)
    np.testing.assert_allclose(
        last.probabilities, classifier.infer(batches[2]).probabilities, atol=1e-5
    )
    # The failed run of three, then each alone.
    assert gated.sizes == [1, 3, 1, 1, 1]
    batcher.stop()


def test_images_of_another_shape_wait_for_a_run_of_their_own(classifier: Classifier) -> None:
    gated = GatedModel(classifier)
    batcher = DynamicBatcher(gated, BatchingPolicy(max_images=8))
    wrong = np.zeros((1, 3, 112, 112), dtype=np.float32)
    batches = [_images(1, 1), wrong, _images(1, 2)]
    outcomes = _queue_behind_a_busy_run(gated, batcher, batches)
    _only_the_middle_one_failed(outcomes, "[N>=1, 3, 224, 224]")
    # Never stacked with the others: their run, then the odd one's.
    assert sorted(gated.sizes) == [1, 1, 2]
    batcher.stop()


def test_a_lone_caller_runs_at_once_and_sees_the_model_s_errors(classifier: Classifier) -> None:
    batcher = DynamicBatcher(classifier, BatchingPolicy(max_images=8))
    batch = _images(2, 4)
    np.testing.assert_allclose(
        batcher.infer(batch).probabilities, classifier.infer(batch).probabilities, atol=1e-6
    )
    with pytest.raises(ValueError, match="float32"):
        batcher.infer(batch.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        batcher.infer([[0.0]])  # type: ignore[arg-type]
    assert batcher.runs == 1
    batcher.stop()


def test_a_stopped_batcher_serves_what_was_queued_then_runs_callers_directly(
    classifier: Classifier,
) -> None:
    gated = GatedModel(classifier)
    batcher = DynamicBatcher(gated, BatchingPolicy(max_images=4))
    blocker = threading.Thread(target=batcher.infer, args=(_images(1, 9),))
    blocker.start()
    assert gated.first_run_started.wait(timeout=30)
    waiting: list[Inference | BaseException] = []
    caller = threading.Thread(
        target=lambda: waiting.extend(_call_concurrently(batcher, [_images(1, 1)] * 2))
    )
    caller.start()
    while batcher.queued() < 2:
        threading.Event().wait(0.005)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    gated.release.set()
    for thread in (caller, blocker, stopper):
        thread.join(timeout=60)
    assert len(waiting) == 2
    assert all(isinstance(w, Inference) for w in waiting)
    runs = batcher.runs
    assert isinstance(batcher.infer(_images(1, 2)), Inference)
    assert batcher.runs == runs  # the model ran, not the ended batcher


def test_the_process_policy_chooses_the_model_or_one_batcher_per_model(
    classifier: Classifier, tiny_model: BuiltModel
) -> None:
    assert infer_batched(classifier) is classifier
    set_batching(BatchingPolicy(max_images=4, wait_s=0.001))
    first = infer_batched(classifier)
    assert isinstance(first, DynamicBatcher)
    assert first.policy == BatchingPolicy(max_images=4, wait_s=0.001)
    assert infer_batched(classifier) is first
    other = Classifier(classifier.session, classifier.contract)
    assert infer_batched(other) is not first


@pytest.mark.parametrize("policy", [{"max_images": 0}, {"wait_s": -1.0}])
def test_a_policy_refuses_nonsense(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be >= [01]"):
        BatchingPolicy(**policy)  # type: ignore[arg-type]


def test_the_model_s_own_failure_reaches_every_caller_of_a_failed_run(
    classifier: Classifier,
) -> None:
    class Broken:
        def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
            raise ModelError("inference failed: the device is gone")

    batcher = DynamicBatcher(Broken(), BatchingPolicy(max_images=4))
    outcomes = _call_concurrently(batcher, [_images(1, s) for s in range(3)])
    assert all(isinstance(o, ModelError) and "device is gone" in str(o) for o in outcomes)
    batcher.stop()


def test_an_answer_with_the_wrong_number_of_rows_fails_every_caller_of_the_run(
    classifier: Classifier,
) -> None:
    class Short:
        def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
            whole = classifier.infer(batch)
            return Inference(whole.probabilities[:1], whole.heatmaps[:1])

    batcher = DynamicBatcher(Short(), BatchingPolicy(max_images=4))
    with pytest.raises(ModelError, match=r"1,\) rows of scores .* for 2 images"):
        batcher.infer(_images(2, 0))
    assert isinstance(batcher.infer(_images(1, 0)), Inference)
    batcher.stop()
