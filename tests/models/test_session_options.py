"""The onnxruntime session options a worker runs with: full graph optimisation, sequential
execution, and the intra-op threads and spinning its settings give (real tiny ONNX model)."""

import os
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from pydantic import ValidationError

from models.export import build_tiny_classifier
from models.runtime import Classifier, clear_session_cache, set_intra_op_threads
from radlight.settings import Settings


@pytest.fixture
def fresh_sessions() -> Iterator[None]:
    clear_session_cache()
    try:
        yield
    finally:
        set_intra_op_threads(0)
        clear_session_cache()


@pytest.mark.usefixtures("fresh_sessions")
def test_sessions_use_the_configured_threads_and_every_optimisation(tmp_path: Path) -> None:
    built = build_tiny_classifier(tmp_path)
    set_intra_op_threads(1)
    options = Classifier.load(
        built.onnx_path, sha256=built.card.sha256
    ).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning between operators, stopped as each run returns.
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(ValueError, match="threads must be >= 0"):
        set_intra_op_threads(-1)


@pytest.mark.usefixtures("fresh_sessions")
def test_spinning_after_a_run_only_when_asked_for(tmp_path: Path) -> None:
    built = build_tiny_classifier(tmp_path)
    set_intra_op_threads(2, spinning=True)
    options = Classifier.load(
        built.onnx_path, sha256=built.card.sha256
    ).session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "0"


def test_automatic_threads_share_the_cores_among_the_worker_processes() -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings(inference_threads=3).effective_inference_threads == 3
    assert Settings(worker_concurrency=1).effective_inference_threads == cores
    assert Settings(worker_concurrency=cores).effective_inference_threads == 1
    assert Settings(worker_concurrency=cores * 4).effective_inference_threads == 1


def test_a_threads_pool_is_one_process_and_batches_only_when_asked() -> None:
    cores = len(os.sched_getaffinity(0))
    threads = Settings(worker_pool="threads", worker_concurrency=8)
    assert threads.effective_inference_threads == cores
    assert not threads.batches_inference
    assert Settings(worker_pool="threads", inference_batch_max=8).batches_inference
    # A prefork process runs one job at a time: there is nothing to batch with.
    assert not Settings(worker_pool="prefork", inference_batch_max=8).batches_inference


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("worker_pool", "gevent"),
        ("inference_batch_max", 0),
        ("inference_batch_max", 257),
        ("inference_batch_wait_ms", -1),
        ("inference_batch_wait_ms", 5000),
        ("inference_precision", "int8"),
        ("inference_precision", "FP16"),
    ],
)
def test_worker_pool_and_batching_settings_refuse_nonsense(setting: str, value: object) -> None:
    with pytest.raises(ValidationError, match=setting):
        Settings(**{setting: value})  # type: ignore[arg-type]
