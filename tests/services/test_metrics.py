"""/metrics over real databases and a real Redis: exact values, histogram buckets, access."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import (
    ApiKey,
    Delivery,
    DeliveryState,
    Destination,
    IngestFailure,
    Instance,
    Job,
    JobState,
    Result,
    ResultKind,
    Role,
    Route,
    Series,
    Study,
    StudyState,
    User,
    utcnow,
)
from db.session import make_engine, make_session_factory, transaction
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_PROCESS_JOB
from radlight.queue import TaskProducer, make_celery
from radlight.settings import Settings
from services.app import create_app
from services.metrics import BUCKETS_S
from services.security import make_api_key
from tests.brokers import clean_redis
from tests.peers import free_port

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: Samples
    types: dict[str, str]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of every sample of ``name``."""
        return {
            dict(labels)[label]: value for (n, labels), value in self.samples.items() if n == name
        }

    def buckets(self, name: str) -> dict[str, float]:
        return self.labelled(f"{name}_bucket", "le")


def parse(text: str) -> Scrape:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return Scrape(text, samples, types)


def scrape(client: TestClient, headers: dict[str, str]) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def cumulative(*observations: float) -> dict[str, float]:
    """The buckets a Prometheus histogram holds for these observations."""
    buckets = {str(bound): float(sum(o <= bound for o in observations)) for bound in BUCKETS_S}
    buckets["+Inf"] = float(len(observations))
    return buckets


def _job(study: Study, route: Route, n: int, state: JobState, **times: datetime) -> Job:
    return Job(study=study, route=route, input_hash=f"h{n}", state=state, model_name="m", **times)


def _result(job: Job, n: int) -> Result:
    uid = f"2.25.{n}"
    return Result(
        job=job,
        kind=ResultKind.FINDINGS_SR,
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        series_instance_uid=uid + ".1",
        relative_path=f"results/{n}.dcm",
        model_name="m",
        model_version="1",
    )


def seed(session: Session, now: datetime) -> None:
    """Rows with known timestamps; 'old' ones lie outside the 24 h histogram window."""
    s = timedelta(seconds=1)
    old = now - timedelta(hours=30)
    ready = Study(
        study_instance_uid=STUDY_UID,
        state=StudyState.COMPLETE,
        first_received_at=now - 2 * timedelta(hours=1),
        completed_at=now - 2 * timedelta(hours=1) + 7 * s,
    )
    other = Study(
        study_instance_uid=STUDY_UID + ".2",
        state=StudyState.COMPLETE,
        first_received_at=now - timedelta(hours=1),
        completed_at=now - timedelta(hours=1) + 45 * s,
    )
    receiving = Study(study_instance_uid=STUDY_UID + ".3", state=StudyState.RECEIVING)
    unrouted_old = Study(
        study_instance_uid=STUDY_UID + ".4",
        state=StudyState.UNROUTED,
        first_received_at=old,
        completed_at=old + 3 * s,
    )
    series = Series(study=ready, series_instance_uid=STUDY_UID + ".10", modality="DX")
    for n, received in enumerate((1, 3)):
        series.instances.append(
            Instance(
                sop_instance_uid=f"{STUDY_UID}.10.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                relative_path=f"x/{n}.dcm",
                size_bytes=10,
                sha256="0" * 64,
                received_count=received,
            )
        )
    for status in (0xC210, 0xC210, 0xA700):
        session.add(IngestFailure(calling_ae="MODALITY", status=status, reason="test"))
    pacs = Destination(name="pacs", host="127.0.0.1", port=104, ae_title="PACS")
    archive = Destination(name="archive", host="127.0.0.1", port=105, ae_title="ARCH")
    route = Route(name="chest", model_name="m", destinations=[pacs, archive])
    t = now - timedelta(minutes=90)
    done = _job(ready, route, 1, JobState.SUCCEEDED, queued_at=t, started_at=t + 2 * s)
    done.finished_at = t + 14 * s  # 12 s of inference
    failed = _job(ready, route, 2, JobState.FAILED, queued_at=t, started_at=t + 20 * s)
    failed.finished_at = t + 20.3 * s
    running = _job(ready, route, 3, JobState.RUNNING, queued_at=t, started_at=t + 200 * s)
    queued = _job(ready, route, 4, JobState.QUEUED, queued_at=t)
    pending = _job(ready, route, 5, JobState.PENDING)
    done_old = _job(ready, route, 6, JobState.SUCCEEDED, queued_at=old, started_at=old + s)
    done_old.finished_at = old + 9 * s
    first, second, old_result = _result(done, 1), _result(done, 2), _result(done_old, 3)
    session.add_all([ready, other, receiving, unrouted_old, series])
    session.add_all([done, failed, running, queued, pending, done_old])
    session.add_all(
        [
            Delivery(result=first, destination=pacs, state=DeliveryState.SENT, sent_at=t + 18 * s),
            Delivery(result=second, destination=pacs, state=DeliveryState.FAILED),
            Delivery(result=first, destination=archive, state=DeliveryState.FAILED),
            Delivery(result=second, destination=archive, state=DeliveryState.RETRYING),
            Delivery(
                result=old_result, destination=pacs, state=DeliveryState.SENT, sent_at=old + 99 * s
            ),
        ]
    )


def test_anonymous_gets_401(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "radlight_" not in response.text


def test_every_role_and_a_viewer_api_key_may_scrape(
    client: TestClient, role_headers: dict[Role, dict[str, str]], sessions: sessionmaker[Session]
) -> None:
    for headers in role_headers.values():
        assert scrape(client, headers).value("radlight_instances_received_total") == 0
    key = make_api_key()
    with transaction(sessions) as session:
        session.add(
            ApiKey(
                name="prometheus",
                prefix=key.prefix,
                secret_sha256=key.secret_sha256,
                role=Role.VIEWER,
            )
        )
    assert scrape(client, {"X-API-Key": key.token}).types["radlight_jobs"] == "gauge"
    assert client.get("/metrics", headers={"X-API-Key": key.token + "x"}).status_code == 401


def test_values_and_histograms_come_from_the_database(
    client: TestClient, viewer: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        seed(session, utcnow())
    got = scrape(client, viewer)

    assert got.types["radlight_instances_received"] == "counter"
    assert got.value("radlight_instances_received_total") == 4
    assert got.labelled("radlight_ingest_failures_total", "status") == {"0xC210": 2, "0xA700": 1}
    assert got.labelled("radlight_studies", "state") == {
        "receiving": 1,
        "complete": 2,
        "unrouted": 1,
    }
    assert got.labelled("radlight_jobs", "state") == {state.value: 0 for state in JobState} | {
        "pending": 1,
        "queued": 1,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
    }
    assert got.labelled("radlight_deliveries", "state") == {
        "pending": 0,
        "sending": 0,
        "retrying": 1,
        "sent": 2,
        "failed": 2,
    }
    assert got.labelled("radlight_delivery_failures", "destination") == {"pacs": 1, "archive": 1}
    assert got.value("radlight_queue_depth", queue=QUEUE_INFERENCE, source="database") == 2
    assert got.value("radlight_queue_depth", queue=QUEUE_DELIVERY, source="database") == 1
    assert ("radlight_broker_up", frozenset()) not in got.samples  # no Redis broker here

    # Only rows whose stage ended in the last 24 h; the "old" ones are left out.
    expected = {
        "radlight_study_receive_to_ready_seconds": (7, 45),
        "radlight_job_queued_to_started_seconds": (2, 20, 200),
        "radlight_inference_seconds": (12, 0.3),
        "radlight_job_finished_to_delivered_seconds": (4,),
    }
    for name, observations in expected.items():
        assert got.types[name] == "histogram"
        assert got.buckets(name) == cumulative(*observations), name
        assert got.value(f"{name}_count") == len(observations)
        assert got.value(f"{name}_sum") == pytest.approx(sum(observations), abs=1e-3)
    assert STUDY_UID not in got.text  # no patient-level identifiers in metrics


@pytest.fixture
def redis_client(
    tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[tuple[TestClient, Settings]]:
    """An app whose broker is a real, private Redis."""
    settings = Settings(data_dir=tmp_path, database_url=database_url, broker_url=redis_url)
    with clean_redis(redis_url), TestClient(create_app(settings)) as test_client:
        yield test_client, settings


def test_queue_depth_comes_from_the_redis_broker(
    redis_client: tuple[TestClient, Settings], viewer: dict[str, str]
) -> None:
    client, settings = redis_client
    producer = TaskProducer(settings)
    try:
        for job_id in (1, 2, 3):
            producer.enqueue_job(job_id)
        producer.enqueue_delivery(7)
    finally:
        producer.close()
    # A message with a priority lands in kombu's per-priority list, "<queue>\x06\x16<step>".
    celery = make_celery(settings)
    try:
        celery.send_task(TASK_PROCESS_JOB, kwargs={"job_id": 4}, queue=QUEUE_INFERENCE, priority=9)
    finally:
        celery.close()

    got = scrape(client, viewer)
    assert got.value("radlight_broker_up") == 1
    assert got.value("radlight_queue_depth", queue=QUEUE_INFERENCE, source="broker") == 4
    assert got.value("radlight_queue_depth", queue=QUEUE_DELIVERY, source="broker") == 1
    assert len(got.labelled("radlight_queue_depth", "queue")) == 2  # no database-sourced series
    # The database holds no job: the depth really is the broker's.
    assert got.labelled("radlight_jobs", "state")["queued"] == 0


def test_queue_depth_falls_back_to_the_database_when_redis_is_down(
    tmp_path: Path, database_url: str, viewer: dict[str, str]
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/9"
    settings = Settings(data_dir=tmp_path, database_url=database_url, broker_url=down)
    with TestClient(create_app(settings)) as client:
        got = scrape(client, viewer)
    assert got.value("radlight_broker_up") == 0
    assert got.value("radlight_queue_depth", queue=QUEUE_INFERENCE, source="database") == 0


def test_openmetrics_when_asked(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get(
        "/metrics", headers={**viewer, "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(response.text)}  # type: ignore[no-untyped-call]
    assert families["radlight_instances_received"].samples[0].value == 0
    assert families["radlight_inference_seconds"].type == "histogram"


def test_each_app_has_its_own_registry(
    client: TestClient, viewer: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with transaction(sessions) as session:
        seed(session, utcnow())
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    engine = make_engine(other_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            session.add(User(username="viewer", password_hash="unused", role=Role.VIEWER))
    finally:
        engine.dispose()
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=other_url))) as other:
        assert scrape(other, viewer).value("radlight_instances_received_total") == 0
    assert scrape(client, viewer).value("radlight_instances_received_total") == 4
    assert "radlight_" not in prometheus_client.generate_latest().decode()
