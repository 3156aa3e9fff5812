"""The node's recording of an instance in a transaction of its own (``record_received``).

On PostgreSQL it is the ``radlight_record_instance`` function of migration 0010, called in
autocommit; on SQLite the statements of ``record_instance``. Both backends run every test here, so
the two paths are held to the same outcomes.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from alembic import command
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from db.ingest import ReceivedInstance, record_received
from db.migrate import alembic_config, upgrade
from db.models import Instance, Series, Study, StudyState
from db.session import make_engine
from tests.peers import postgres_database

RECEIVED = ReceivedInstance(
    study_instance_uid="1.2.826.0.1.3680043.10.1",
    series_instance_uid="1.2.826.0.1.3680043.10.1.1",
    sop_instance_uid="1.2.826.0.1.3680043.10.1.1.1",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="DX",
    body_part_examined="CHEST",
    view_position="PA",
    relative_path="instances/a.dcm",
    size_bytes=10,
    sha256="a" * 64,
    calling_ae="PACS",
    called_ae="RADLIGHT",
    patient_age_years=61,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_new_instance_is_recorded_with_its_study_and_series(engine: Engine) -> None:
    outcome = record_received(RECEIVED, engine=engine)

    assert not outcome.duplicate
    with Session(engine) as session:  # another connection: the record is committed
        study = session.get_one(Study, outcome.study_id)
        instance = session.get_one(Instance, outcome.instance_id)
        series = session.get_one(Series, instance.series_id)
        assert (study.study_instance_uid, study.state, study.instance_count) == (
            RECEIVED.study_instance_uid,
            StudyState.RECEIVING,
            1,
        )
        assert (study.calling_ae, study.called_ae) == ("PACS", "RADLIGHT")
        assert study.first_received_at == study.last_received_at
        assert (series.study_id, series.series_instance_uid, series.modality) == (
            study.id,
            RECEIVED.series_instance_uid,
            "DX",
        )
        assert series.body_part_examined == "CHEST"
        assert (instance.sop_instance_uid, instance.received_count) == (
            RECEIVED.sop_instance_uid,
            1,
        )
        assert (instance.relative_path, instance.size_bytes, instance.sha256) == (
            "instances/a.dcm",
            10,
            "a" * 64,
        )
        assert (instance.view_position, instance.patient_age_years) == ("PA", 61)
        assert instance.transfer_syntax_uid == RECEIVED.transfer_syntax_uid


def test_a_resent_instance_is_counted_updated_and_reopens_its_study(engine: Engine) -> None:
    first = record_received(RECEIVED, engine=engine)
    with engine.begin() as connection:
        connection.execute(
            Study.__table__.update().values(state=StudyState.COMPLETE)  # type: ignore[attr-defined]
        )
    resent = replace(
        RECEIVED, relative_path="instances/b.dcm", size_bytes=20, sha256="b" * 64, calling_ae="CR1"
    )

    again = record_received(resent, engine=engine)
    sibling = record_received(
        replace(RECEIVED, sop_instance_uid=RECEIVED.sop_instance_uid + ".2"), engine=engine
    )

    assert again.duplicate
    assert (again.instance_id, again.study_id) == (first.instance_id, first.study_id)
    assert not sibling.duplicate
    assert sibling.study_id == first.study_id
    with Session(engine) as session:
        study = session.get_one(Study, first.study_id)
        assert (study.state, study.instance_count, study.calling_ae) == (
            StudyState.RECEIVING,
            2,
            "PACS",  # the sibling came last
        )
        instance = session.get_one(Instance, first.instance_id)
        assert (instance.received_count, instance.relative_path, instance.size_bytes) == (
            2,
            "instances/b.dcm",
            20,
        )
        assert instance.sha256 == "b" * 64
        assert session.scalar(select(func.count()).select_from(Series)) == 1


def test_associations_recording_one_new_study_at_once_make_one_study(engine: Engine) -> None:
    """Eight senders' instances of the same new study, concurrently: one study and series row,
    every instance counted once, no sender refused (the upserts wait on each other)."""
    instances = [
        replace(RECEIVED, sop_instance_uid=f"{RECEIVED.series_instance_uid}.{n}") for n in range(80)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda item: record_received(item, engine=engine), instances))

    assert not any(outcome.duplicate for outcome in outcomes)
    assert len({outcome.study_id for outcome in outcomes}) == 1
    assert len({outcome.instance_id for outcome in outcomes}) == 80
    with Session(engine) as session:
        assert session.scalars(select(Study.instance_count)).one() == 80
        assert session.scalar(select(func.count()).select_from(Series)) == 1
        assert session.scalar(select(func.count()).select_from(Instance)) == 80


def _record_function_exists(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT count(*) FROM pg_proc WHERE proname = 'radlight_record_instance'")
            ).scalar_one()
    finally:
        engine.dispose()
    return bool(found)


def test_the_postgresql_function_comes_and_goes_with_its_migration() -> None:
    with postgres_database() as url:
        upgrade(url, "0009")
        assert not _record_function_exists(url)
        upgrade(url)
        assert _record_function_exists(url)
        command.downgrade(alembic_config(url), "0009")
        assert not _record_function_exists(url)
