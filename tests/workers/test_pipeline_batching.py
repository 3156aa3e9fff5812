"""Jobs run at once in threads of one worker process (the threads pool) with dynamic batching on:
their images share one model run, and every job gets the results of its own image.

In-process on real parts (real DX files, the tiny ONNX classifier, SQLite and PostgreSQL); the
Celery threads pool itself is exercised by tests/reliability/test_load.py.
"""

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from db.models import JobState, Result, ResultKind
from models import batching
from models.batching import BatchingPolicy, DynamicBatcher, batching_policy, set_batching
from models.export import BuiltModel
from models.runtime import load_model
from tests.workers.conftest import copy_with_new_uids, receive, worker_context
from tests.workers.test_pipeline import make_job
from workers.analysis import AnalysedImage, ResultOptions, run_model
from workers.context import WorkerContext
from workers.imaging import load_frontal_chest
from workers.pipeline import run_job

JOBS = 3


@pytest.fixture
def batching_ctx(
    tmp_path: Path, database_url: str, tiny_model: BuiltModel
) -> Iterator[WorkerContext]:
    with worker_context(
        tmp_path,
        database_url,
        tiny_model,
        worker_pool="threads",
        worker_concurrency=JOBS,
        inference_batch_max=JOBS,
        inference_batch_wait_ms=20,
    ) as context:
        assert batching_policy() == BatchingPolicy(max_images=JOBS, wait_s=0.02)
        # A longer wait than settings allow, so that the three jobs' images meet in one run
        # however slow this machine is; the run starts as soon as all three are there.
        set_batching(BatchingPolicy(max_images=JOBS, wait_s=60.0))
        yield context
    batching.stop_batchers()
    set_batching(BatchingPolicy())


def test_concurrent_jobs_share_a_model_run_and_keep_their_own_scores(
    batching_ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx = batching_ctx
    sources = [copy_with_new_uids(real_dicom_files[i % len(real_dicom_files)]) for i in range(JOBS)]
    mirrored = sources[2].pixel_array[:, ::-1]  # the third image differs from the first
    sources[2].PixelData = np.ascontiguousarray(mirrored).tobytes()
    jobs = []
    for source in sources:
        outcome = receive(ctx, source)
        jobs.append(
            make_job(
                ctx, outcome.study_id, [str(source.SOPInstanceUID)], model_name=tiny_model.card.name
            )
        )
    states: dict[int, JobState | None] = {}
    threads = [
        threading.Thread(target=lambda j=job: states.__setitem__(j, run_job(j, ctx)))
        for job in jobs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert states == dict.fromkeys(jobs, JobState.SUCCEEDED)

    entry = ctx.registry.get(tiny_model.card.name)
    batcher = batching.infer_batched(load_model(entry))
    assert isinstance(batcher, DynamicBatcher)
    assert (batcher.runs, batcher.largest_run) == (1, JOBS)

    # Each job's report states the scores of its own image, as a run over that image alone gives.
    set_batching(BatchingPolicy())
    with ctx.sessions() as session:
        reports = {
            r.job_id: r.summary
            for r in session.scalars(select(Result).where(Result.kind == ResultKind.FINDINGS_SR))
        }
    for job, source in zip(jobs, sources, strict=True):
        alone = run_model(
            entry, [AnalysedImage(source, load_frontal_chest(source))], ResultOptions()
        )[0]
        stated = reports[job]["findings"]
        assert isinstance(stated, dict)
        assert list(stated) == [str(source.SOPInstanceUID)]
        scores = stated[str(source.SOPInstanceUID)]
        expected = {f.score.label: f.score.probability for f in alone.findings}
        assert scores.keys() == expected.keys()
        np.testing.assert_allclose(
            [scores[label] for label in expected], list(expected.values()), atol=1e-5
        )
    # The three images differ, so a mix-up of rows between jobs would show.
    assert len({str(sorted(reports[j]["findings"].values())) for j in jobs}) == JOBS
