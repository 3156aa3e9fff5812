"""Repository behaviour on SQLite and PostgreSQL: idempotent ingest, one job per input set, claims."""

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination, upsert_route
from db.deliveries import (
    claim_deliveries,
    claim_delivery,
    ensure_deliveries,
    mark_deliveries_sent,
    stale_deliveries,
)
from db.ingest import ReceivedInstance, quiet_studies, record_instance
from db.jobs import claim_job, create_job_if_new, input_hash, requeue_candidates
from db.models import (
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    Job,
    JobState,
    Result,
    ResultKind,
    Study,
    StudyState,
    utcnow,
)
from db.results import ResultRecord, record_results
from db.session import transaction

RECEIVED = ReceivedInstance(
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4",
    sop_instance_uid="1.2.3.4.5",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="DX",
    body_part_examined="CHEST",
    view_position="PA",
    relative_path="instances/1.2.3/1.2.3.4/1.2.3.4.5.dcm",
    size_bytes=10,
    sha256="0" * 64,
    calling_ae="PACS",
    called_ae="RADLIGHT",
)


def test_record_instance_is_idempotent_and_counts_resends(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        first = record_instance(RECEIVED, session=session)
    with transaction(sessions) as session:
        second = record_instance(RECEIVED, session=session)
        other = record_instance(replace(RECEIVED, sop_instance_uid="1.2.3.4.6"), session=session)
    assert not first.duplicate
    assert second.duplicate
    assert second.instance_id == first.instance_id
    assert other.study_id == first.study_id
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 2
        assert session.get(Instance, first.instance_id).received_count == 2  # type: ignore[union-attr]


def test_a_late_arrival_reopens_the_study_and_a_resend_updates_the_instance(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        first = record_instance(RECEIVED, session=session)
        session.execute(
            Study.__table__.update().values(state=StudyState.COMPLETE)  # type: ignore[attr-defined]
        )
    with sessions() as session:
        before = session.get(Study, first.study_id)
        assert before is not None
        first_seen, last_seen = before.first_received_at, before.last_received_at
    resent = replace(
        RECEIVED,
        relative_path="instances/again.dcm",
        size_bytes=20,
        calling_ae="MODALITY",
        called_ae="RADLIGHT2",
        view_position="AP",
    )
    with transaction(sessions) as session:
        again = record_instance(resent, session=session)
        later = record_instance(
            replace(resent, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.9.1"),
            session=session,
        )
    assert again.duplicate
    assert (again.instance_id, again.study_id) == (first.instance_id, first.study_id)
    assert not later.duplicate
    assert later.study_id == first.study_id
    with sessions() as session:
        study = session.get(Study, first.study_id)
        assert study is not None
        # Re-opened for assembly, by the latest sender, first arrival kept.
        assert study.state is StudyState.RECEIVING
        assert (study.calling_ae, study.called_ae) == ("MODALITY", "RADLIGHT2")
        assert study.first_received_at == first_seen
        assert study.last_received_at >= last_seen
        assert study.instance_count == 2
        instance = session.get(Instance, first.instance_id)
        assert instance is not None
        assert (instance.received_count, instance.relative_path, instance.size_bytes) == (
            2,
            "instances/again.dcm",
            20,
        )
        assert instance.view_position == "AP"
        assert session.scalar(select(func.count()).select_from(Instance)) == 2


def test_quiet_studies_waits_for_silence(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        record_instance(RECEIVED, session=session)
    with transaction(sessions) as session:
        assert (
            quiet_studies(session=session, received_before=utcnow() - timedelta(seconds=60)) == []
        )
        ready = quiet_studies(session=session, received_before=utcnow() + timedelta(seconds=1))
        assert [s.study_instance_uid for s in ready] == ["1.2.3"]
        ready[0].state = StudyState.COMPLETE
    with transaction(sessions) as session:
        record_instance(RECEIVED, session=session)  # a late or repeated instance re-opens it
        assert session.scalars(select(Study.state)).one() == StudyState.RECEIVING


def test_one_job_per_input_set_and_a_single_claim(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        outcome = record_instance(RECEIVED, session=session)
        route = upsert_route(session=session, name="chest", model_name="m", modalities=["dx"])
        job = create_job_if_new(
            session=session, study_id=outcome.study_id, route=route, sop_instance_uids=["1.2.3.4.5"]
        )
        assert job is not None
        again = create_job_if_new(
            session=session, study_id=outcome.study_id, route=route, sop_instance_uids=["1.2.3.4.5"]
        )
        assert again is None
        assert route.modalities == "DX"
    with transaction(sessions) as session:
        assert claim_job(session=session, job_id=job.id)
    with transaction(sessions) as session:
        assert not claim_job(session=session, job_id=job.id)
        stored = session.get(Job, job.id)
        assert stored is not None
        assert stored.state == JobState.RUNNING
        assert stored.attempts == 1
        assert stored.input_sop_instance_uids == ["1.2.3.4.5"]
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_input_hash_ignores_order_and_repeats() -> None:
    assert input_hash(["2", "1", "1"]) == input_hash(["1", "2"])
    assert input_hash(["1"]) != input_hash(["1", "2"])


def _received_job(session: Session) -> Job:
    """The job of RECEIVED's study on a route "chest", flushed (it has its id)."""
    outcome = record_instance(RECEIVED, session=session)
    route = upsert_route(session=session, name="chest", model_name="m")
    job = create_job_if_new(
        session=session, study_id=outcome.study_id, route=route, sop_instance_uids=["1.2.3.4.5"]
    )
    assert job is not None
    session.flush()
    return job


def test_stalled_jobs_and_deliveries_are_found(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        job = _received_job(session)
        destination = upsert_destination(
            session=session, name="pacs", host="127.0.0.1", port=104, ae_title="PACS"
        )
        result = Result(
            job_id=job.id,
            kind=ResultKind.FINDINGS_SR,
            sop_instance_uid="2.25.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            series_instance_uid="2.25.2",
            relative_path="results/x.dcm",
            model_name="m",
            model_version="1",
        )
        session.add(result)
        session.flush()
        (delivery,) = ensure_deliveries(session=session, result=result, destinations=[destination])
        assert ensure_deliveries(session=session, result=result, destinations=[destination]) == [
            delivery
        ]
    with transaction(sessions) as session:
        # PENDING jobs are always candidates: committed but maybe never queued.
        assert requeue_candidates(session=session, stale_before=utcnow()) == [job.id]
        assert claim_job(session=session, job_id=job.id)
    with transaction(sessions) as session:
        assert requeue_candidates(session=session, stale_before=utcnow() - timedelta(hours=1)) == []
        later = utcnow() + timedelta(hours=1)
        assert requeue_candidates(session=session, stale_before=later) == [job.id]
        assert stale_deliveries(session=session, pending_before=later, sending_before=later) == [
            delivery.id
        ]
        assert claim_delivery(session=session, delivery_id=delivery.id)
        assert not claim_delivery(session=session, delivery_id=delivery.id)


def _record(uid: str, destinations: list[Destination]) -> ResultRecord:
    return ResultRecord(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        series_instance_uid="2.25.2",
        kind=ResultKind.FINDINGS_SR,
        sc_encoding=None,
        source_sop_instance_uid=None,
        relative_path=f"results/{uid}.dcm",
        model_name="m",
        model_version="1",
        summary={"n": 1},
        destinations=destinations,
    )


def test_results_and_their_deliveries_are_recorded_claimed_and_sent_in_bulk(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        job = _received_job(session)
        pacs = upsert_destination(session=session, name="pacs", host="h", port=104, ae_title="P")
        off = upsert_destination(
            session=session, name="off", host="h", port=105, ae_title="O", enabled=False
        )
        ids = record_results(
            session=session,
            job_id=job.id,
            records=[_record("2.25.10", [pacs, off]), _record("2.25.11", [pacs])],
        )
    assert [len(each) for each in ids] == [1, 1]  # no delivery to a disabled destination
    first, second = ids[0][pacs.id], ids[1][pacs.id]
    with transaction(sessions) as session:
        assert claim_deliveries(session=session, delivery_ids=[first, second]) == {
            first: 1,
            second: 1,
        }
        assert claim_deliveries(session=session, delivery_ids=[first]) == {}  # already sending
        mark_deliveries_sent(session=session, statuses={first: 0x0000, second: 0xB000})
    with transaction(sessions) as session:
        sent = {d.id: d for d in session.scalars(select(Delivery))}
        assert {d.state for d in sent.values()} == {DeliveryState.SENT}
        assert (sent[first].last_status, sent[second].last_status) == (0x0000, 0xB000)
        assert all(d.sent_at is not None for d in sent.values())
        # A re-run records the same results again: same rows, sent deliveries back in line.
        again = record_results(
            session=session,
            job_id=job.id,
            records=[_record("2.25.10", [pacs]), _record("2.25.11", [pacs])],
        )
    assert again == ids
    with transaction(sessions) as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 2
        reopened = session.scalars(select(Delivery)).all()
        assert {(d.state, d.attempts) for d in reopened} == {(DeliveryState.PENDING, 0)}
