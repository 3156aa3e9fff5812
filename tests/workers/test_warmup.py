"""A new worker process loads its enabled routes' models before its first job (workers.warmup),
on both databases, with the tiny classifier installed in a real registry. The real Celery
worker's child does it too: tests/integration/test_walking_skeleton.py reads it in its log."""

import logging
from pathlib import Path

import pytest

from db.config import upsert_route
from db.session import transaction
from models.export import BuiltModel
from models.labels import finding_code
from models.runtime import clear_session_cache, loaded_model_sha256s
from tests.workers.conftest import worker_settings
from workers.analysis import algorithm_of
from workers.context import WorkerContext, build_context
from workers.results import sr
from workers.warmup import route_models, start_warm_up, warm_up


def add_route(ctx: WorkerContext, name: str, model_name: str, **fields: object) -> None:
    with transaction(ctx.sessions) as session:
        upsert_route(session=session, name=name, model_name=model_name, **fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_sessions_loaded() -> None:
    clear_session_cache()


def test_the_enabled_routes_models_are_loaded(ctx: WorkerContext, tiny_model: BuiltModel) -> None:
    card = tiny_model.card
    add_route(ctx, "chest", card.name, priority=20)
    add_route(ctx, "same-model", card.name, model_version=card.version, priority=10)
    add_route(ctx, "off", "another-model", enabled=False)
    assert loaded_model_sha256s() == frozenset()

    loaded = warm_up(ctx)

    # Routes in the order they are tried; the disabled route's model is not wanted.
    assert route_models(ctx) == [(card.name, card.version), (card.name, None)]
    assert [(e.name, e.version) for e in loaded] == [(card.name, card.version)] * 2
    assert loaded_model_sha256s() == {tiny_model.card.sha256}


def test_the_report_items_of_each_loaded_model_are_made(
    ctx: WorkerContext, tiny_model: BuiltModel
) -> None:
    """Each finding's score and Present/Absent items of the model's report, made before its
    first report (``workers.results.sr.prepare_findings_reports``)."""
    sr._prototypes.cache_clear()
    add_route(ctx, "chest", tiny_model.card.name)
    [entry] = warm_up(ctx)
    prototypes = sr._prototypes(algorithm_of(entry))
    codes = {finding_code(label.name) for label in tiny_model.card.labels}
    assert len(codes) == 14
    assert set(prototypes._scores) == codes
    assert set(prototypes._presences) == {(c, p) for c in codes for p in (True, False)}


def test_a_model_that_is_not_installed_is_logged_and_the_rest_still_load(
    ctx: WorkerContext, tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    add_route(ctx, "first", "not-installed", priority=1)
    add_route(ctx, "second", tiny_model.card.name, priority=2)
    with caplog.at_level(logging.INFO, logger="workers.warmup"):
        loaded = warm_up(ctx)
    assert [e.name for e in loaded] == [tiny_model.card.name]
    assert loaded_model_sha256s() == {tiny_model.card.sha256}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not-installed" in warnings[0]
    assert "1 of 2 route models loaded" in caplog.text


def test_no_routes_loads_nothing(ctx: WorkerContext) -> None:
    assert warm_up(ctx) == []
    assert loaded_model_sha256s() == frozenset()


def test_a_database_it_cannot_read_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty SQLite file (never migrated): the routes cannot be read; the child lives on."""
    context = build_context(worker_settings(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}"))
    try:
        with caplog.at_level(logging.WARNING, logger="workers.warmup"):
            assert warm_up(context) == []
    finally:
        context.producer.close()
        context.engine.dispose()
    assert "cannot read the routes" in caplog.text


def test_the_thread_logs_an_unexpected_error_instead_of_raising(
    ctx: WorkerContext, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_ctx: WorkerContext) -> list[tuple[str, str | None]]:
        raise RuntimeError("a bug in the warm-up")

    monkeypatch.setattr("workers.warmup.route_models", broken)
    with caplog.at_level(logging.ERROR, logger="workers.warmup"):
        thread = start_warm_up(ctx)
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert thread.daemon
    assert "worker warm-up failed" in caplog.text
    assert "a bug in the warm-up" in caplog.text
