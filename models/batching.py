"""Dynamic batching across jobs: the images of jobs running at once go through the model together.

A worker that runs several jobs in threads of one process (``RADLIGHT_WORKER_POOL=threads``)
shares one session per model. With ``RADLIGHT_INFERENCE_BATCH_MAX`` above 1 each model gets a
:class:`DynamicBatcher`: one thread that runs the model, and a queue the jobs' threads put their
prepared images on. When the model is free the next run takes every request waiting, up to the
maximum number of images, and waits ``RADLIGHT_INFERENCE_BATCH_WAIT_MS`` for more after the first
(jobs whose results came from one run come back a moment apart; without the wait the first of
them would run alone). A busy worker thus runs big batches, what a GPU needs to be used well,
where one image at a time leaves it mostly idle (docs/PERFORMANCE.md, "Inference"); an idle one
adds the wait to a job's inference.

Only the model's run is shared; each job keeps its own preprocessing, results, state and retries.
A run that fails for a batch of several requests is run again request by request, so that a bad
input fails its own job only.
"""

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.runtime import CACHE_SIZE, Inference
from radlight.errors import ModelError

logger = logging.getLogger(__name__)


class BatchableModel(Protocol):
    """What :class:`DynamicBatcher` runs: both of ``models.runtime``'s interfaces."""

    def infer(self, batch: npt.NDArray[np.generic]) -> Inference: ...


@dataclass(frozen=True)
class BatchingPolicy:
    """How big a run may get and how long it may wait for more images after its first."""

    max_images: int = 1
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        if self.wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {self.wait_s}")

    @property
    def enabled(self) -> bool:
        return self.max_images > 1


@dataclass
class _Request:
    batch: npt.NDArray[np.generic]
    result: "Future[Inference]" = field(default_factory=Future)

    @property
    def images(self) -> int:
        return int(self.batch.shape[0]) if self.batch.ndim else 1

    @property
    def kind(self) -> tuple[object, ...]:
        """Requests of one kind can be stacked: the same dtype and the same image shape."""
        return (self.batch.dtype, self.batch.shape[1:])


_STOP = object()


class DynamicBatcher:
    """Runs ``model`` in a thread of its own over the requests of many callers, stacked.

    ``infer`` has the model's own contract (a batch ``[n, ...]`` in, its :class:`Inference` out)
    and blocks until its rows of a run are ready. ``runs`` counts the model's runs and
    ``largest_run`` the most images one took (the tests and the benchmark read them).
    """

    def __init__(self, model: BatchableModel, policy: BatchingPolicy) -> None:
        self.model = model
        self.policy = policy
        self.runs = 0
        self.largest_run = 0
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._held: deque[_Request] = deque()  # taken from the queue, left for the next run
        self._stopped = False
        self._entry = threading.Lock()  # orders requests and the stop
        self._thread = threading.Thread(target=self._serve, name="radlight-batcher", daemon=True)
        self._thread.start()

    def infer(self, batch: npt.NDArray[np.generic]) -> Inference:
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(batch).__name__}")
        request = _Request(batch)
        with self._entry:
            accepted = not self._stopped
            if accepted:
                self._queue.put(request)
        if not accepted:  # this batcher was stopped (evicted); its model still runs
            return self.model.infer(batch)
        return request.result.result()

    def queued(self) -> int:
        """Requests waiting for a run (the tests and the benchmark watch it)."""
        return self._queue.qsize() + len(self._held)

    def stop(self) -> None:
        """Serve what is queued, then end the thread; later requests run the model directly."""
        with self._entry:
            self._stopped = True
            self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while True:
            first = self._held.popleft() if self._held else self._queue.get()
            if not isinstance(first, _Request):
                return  # the stop, after every request (they are queued before it)
            group, stopping = self._gather(first)
            try:
                self._run(group)
            except Exception as exc:  # a bug here must not leave callers waiting
                logger.exception("the batcher failed a run")
                for request in group:
                    if not request.result.done():
                        request.result.set_exception(exc)
            if stopping:
                while self._held:
                    self._run([self._held.popleft()])
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` and the requests of its kind that fit beside it: those already waiting (held
        back from the last run or queued), then those that arrive within the policy's wait."""
        group, images = [first], first.images
        for request in list(self._held):
            if images >= self.policy.max_images:
                break
            if request.kind == first.kind and images + request.images <= self.policy.max_images:
                self._held.remove(request)
                group.append(request)
                images += request.images
        deadline = time.monotonic() + self.policy.wait_s
        while images < self.policy.max_images:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if not isinstance(item, _Request):
                return group, True
            if item.kind == first.kind and images + item.images <= self.policy.max_images:
                group.append(item)
                images += item.images
            else:
                self._held.append(item)
        return group, False

    def _run(self, group: list[_Request]) -> None:
        stacked = group[0].batch if len(group) == 1 else np.concatenate([r.batch for r in group])
        try:
            output = self.model.infer(stacked)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, whose job reports it
            if len(group) == 1:
                group[0].result.set_exception(exc)
                return
            # One bad input must not fail the jobs it happened to share a run with.
            logger.info(
                "a batched run of %d requests failed (%s); running each alone", len(group), exc
            )
            for request in group:
                self._run([request])
            return
        self.runs += 1
        rows = int(stacked.shape[0])
        self.largest_run = max(self.largest_run, rows)
        if output.probabilities.shape[:1] != (rows,) or output.heatmaps.shape[:1] != (rows,):
            wrong = ModelError(
                f"the model answered {output.probabilities.shape[:1]} rows of scores and "
                f"{output.heatmaps.shape[:1]} of heatmaps for {rows} images"
            )
            for request in group:
                request.result.set_exception(wrong)
            return
        start = 0
        for request in group:
            end = start + request.images
            request.result.set_result(
                Inference(
                    probabilities=output.probabilities[start:end],
                    heatmaps=output.heatmaps[start:end],
                )
            )
            start = end
        if len(group) > 1:
            logger.debug("one run over %d images from %d requests", stacked.shape[0], len(group))


_policy = BatchingPolicy()
_batchers: "OrderedDict[int, DynamicBatcher]" = OrderedDict()
_lock = threading.Lock()


def set_batching(policy: BatchingPolicy) -> None:
    """This process's batching policy (a worker sets it from its settings); batchers made before
    keep theirs."""
    global _policy
    _policy = policy


def batching_policy() -> BatchingPolicy:
    """This process's batching policy."""
    return _policy


def infer_batched(model: BatchableModel) -> BatchableModel:
    """What to call ``infer`` on for ``model`` in this process: the model itself, or, with
    batching on, its batcher (one per model, as many as the runtime keeps sessions for)."""
    if not _policy.enabled:
        return model
    key = id(model)  # unique while its batcher lives, which holds the model
    evicted: list[DynamicBatcher] = []
    with _lock:
        batcher = _batchers.get(key)
        if batcher is None:
            batcher = DynamicBatcher(model, _policy)
            _batchers[key] = batcher
            while len(_batchers) > CACHE_SIZE:
                evicted.append(_batchers.popitem(last=False)[1])
        _batchers.move_to_end(key)
    for oldest in evicted:
        oldest.stop()
    return batcher


def stop_batchers() -> None:
    """End every batcher of this process (tests; a worker's batchers end with it)."""
    with _lock:
        batchers = list(_batchers.values())
        _batchers.clear()
    for batcher in batchers:
        batcher.stop()
