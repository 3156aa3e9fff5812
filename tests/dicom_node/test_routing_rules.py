"""Routing on body part, view position and age, and per-route quiet periods, on SQLite and
PostgreSQL: the rules directly, the facts recorded at ingest (age from the real headers), and the
assembler deciding when each route takes a study.
"""

import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import ReceivedInstance, record_instance
from db.models import Instance, Job, Route, StudyState
from db.session import transaction
from dicom_node.assembly import Assembler
from dicom_node.headers import read_header
from dicom_node.routing import InstanceFacts, StudyFacts, select_inputs
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.dicom_node.test_assembly import add_route, make_quiet, study

DX = "1.2.840.10008.5.1.4.1.1.1.1"
NODE_QUIET_S = 30.0


def route(**matchers: object) -> Route:
    return Route(name="r", model_name="m", **matchers)


FACTS = StudyFacts(
    called_ae="RADLIGHT",
    calling_ae="PACS",
    instances=[
        InstanceFacts("1.1", DX, "DX", body_part="CHEST", view_position="PA", patient_age_years=58),
        InstanceFacts("1.2", DX, "DX", body_part="chest", view_position="LL", patient_age_years=58),
        InstanceFacts(
            "1.3", DX, "CR", body_part="ABDOMEN", view_position="AP", patient_age_years=4
        ),
        InstanceFacts("1.4", DX, "DX"),  # no body part, view or age in the header
        InstanceFacts("1.5", DX, "DX", body_part="PORT CHEST", patient_age_years=18),
    ],
)


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ({}, ["1.1", "1.2", "1.3", "1.4", "1.5"]),
        ({"body_parts": "CHEST"}, ["1.1", "1.2"]),
        ({"body_parts": "chest, PORT CHEST"}, ["1.1", "1.2", "1.5"]),
        ({"body_parts": "SKULL"}, []),
        ({"view_positions": "PA,AP"}, ["1.1", "1.3"]),
        ({"view_positions": "ll"}, ["1.2"]),
        ({"min_age_years": 18}, ["1.1", "1.2", "1.5"]),
        ({"min_age_years": 19}, ["1.1", "1.2"]),
        ({"max_age_years": 17}, ["1.3"]),
        ({"max_age_years": 18}, ["1.3", "1.5"]),
        ({"min_age_years": 4, "max_age_years": 4}, ["1.3"]),
        ({"min_age_years": 0}, ["1.1", "1.2", "1.3", "1.5"]),  # a bound excludes unknown ages
        ({"body_parts": "CHEST", "view_positions": "PA", "min_age_years": 18}, ["1.1"]),
        ({"body_parts": "CHEST", "modalities": "CR"}, []),
        ({"modalities": "CR", "max_age_years": 10}, ["1.3"]),
    ],
)
def test_select_inputs_on_body_part_view_and_age(
    matchers: dict[str, object], expected: list[str]
) -> None:
    assert select_inputs(route(**matchers), FACTS) == expected


def test_age_comes_from_the_real_headers_and_is_recorded(
    real_dicom_files: list[Path],
    sessions: sessionmaker[Session],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The NIH files state PatientAge as a bare number; other forms are read too. pydicom would
    log an invalid value it converts (warnings are errors here, and the log is checked)."""
    caplog.set_level(logging.DEBUG)
    ages = []
    for path in real_dicom_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = read_header(
            path.read_bytes(),
            expected_sop_class_uid=str(ds.SOPClassUID),
            expected_sop_instance_uid=str(ds.SOPInstanceUID),
        )
        ages.append((str(ds.PatientAge), header.patient_age_years))
    assert ages == [("58", 58), ("81", 81)]

    ds = pydicom.dcmread(real_dicom_files[0])
    for stated, birth, study_date, expected in (
        ("018M", None, None, 1),
        ("003W", None, None, 0),
        ("", "19700615", "20200614", 49),
        ("", "19700615", "20200615", 50),
        ("", "20300101", "20200101", None),  # born after the study: unknown
        ("", None, None, None),
        ("old", "1970-06-15", "20200615", None),  # invalid AS and DA: unknown, and not logged
    ):
        with pydicom.config.disable_value_validation():
            ds.PatientAge = stated
            ds.PatientBirthDate = birth
            ds.StudyDate = study_date
            copy = tmp_path / "aged.dcm"
            ds.save_as(copy, enforce_file_format=True)
        caplog.clear()
        header = read_header(
            copy.read_bytes(),
            expected_sop_class_uid=str(ds.SOPClassUID),
            expected_sop_instance_uid=str(ds.SOPInstanceUID),
        )
        assert header.patient_age_years == expected, (stated, birth, study_date)
        assert "1970" not in caplog.text

    study_uid = receive(sessions, generate_uid(), age=58)
    with sessions() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.patient_age_years == 58
        assert study(sessions, study_uid).state is StudyState.RECEIVING


# -- the assembler with per-route quiet periods and the new matchers ---------------------------


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[TaskProducer]:
    """The embedded (folder) queue: assembly never sends anything, dispatch would."""
    queue = TaskProducer(Settings(data_dir=tmp_path / "queue-data"))
    try:
        yield queue
    finally:
        queue.close()


@pytest.fixture
def node(sessions: sessionmaker[Session], producer: TaskProducer) -> Assembler:
    return Assembler(sessions, producer, quiet_seconds=NODE_QUIET_S, requeue_after_s=300.0)


def receive(
    sessions: sessionmaker[Session],
    study_uid: str,
    *,
    age: int | None = None,
    body_part: str | None = "CHEST",
    view: str | None = "PA",
) -> str:
    received = ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        sop_class_uid=DX,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX",
        body_part_examined=body_part,
        view_position=view,
        relative_path="instances/x.dcm",
        size_bytes=1,
        sha256="0" * 64,
        calling_ae="PACS",
        called_ae="RADLIGHT",
        patient_age_years=age,
    )
    with transaction(sessions) as session:
        record_instance(received, session=session)
    return study_uid


def routed(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return [job.route.name for job in session.scalars(select(Job).order_by(Job.id))]


def test_each_route_waits_for_its_own_quiet_period(
    sessions: sessionmaker[Session], node: Assembler
) -> None:
    add_route(sessions, "fast", quiet_seconds=2.0)
    add_route(sessions, "default")  # the node's 30 s
    add_route(sessions, "slow", quiet_seconds=120.0)
    uid = receive(sessions, generate_uid())

    make_quiet(sessions, uid, 1.0)
    assert node.assemble() == []
    assert routed(sessions) == []

    # Quiet for less than the node's period: the fast route takes it; the study stays open.
    make_quiet(sessions, uid, 10.0)
    assert len(node.assemble()) == 1
    assert routed(sessions) == ["fast"]
    assert study(sessions, uid).state is StudyState.RECEIVING
    assert node.assemble() == []  # nothing twice while it waits for the others

    make_quiet(sessions, uid, 60.0)
    assert len(node.assemble()) == 1
    assert routed(sessions) == ["fast", "default"]
    assert study(sessions, uid).state is StudyState.RECEIVING

    make_quiet(sessions, uid, 121.0)
    assert len(node.assemble()) == 1
    assert routed(sessions) == ["fast", "default", "slow"]
    done = study(sessions, uid)
    assert (done.state, done.reason) == (StudyState.COMPLETE, None)


def test_a_late_instance_while_waiting_reopens_the_fast_route_too(
    sessions: sessionmaker[Session], node: Assembler
) -> None:
    add_route(sessions, "fast", quiet_seconds=1.0)
    add_route(sessions, "slow", quiet_seconds=300.0)
    uid = receive(sessions, generate_uid())
    make_quiet(sessions, uid, 5.0)
    assert len(node.assemble()) == 1

    receive(sessions, uid)  # a second image arrives before the slow route took the study
    make_quiet(sessions, uid, 5.0)
    assert len(node.assemble()) == 1
    with sessions() as session:
        sizes = [
            len(j.input_sop_instance_uids) for j in session.scalars(select(Job).order_by(Job.id))
        ]
    assert sizes == [1, 2]
    assert routed(sessions) == ["fast", "fast"]


def test_an_unmatched_study_is_closed_after_the_shortest_period(
    sessions: sessionmaker[Session], node: Assembler
) -> None:
    add_route(sessions, "children", max_age_years=12, quiet_seconds=2.0)
    add_route(sessions, "slow-adults", min_age_years=18, quiet_seconds=600.0)
    teen = receive(sessions, generate_uid(), age=15)
    make_quiet(sessions, teen, 5.0)
    assert node.assemble() == []
    unrouted = study(sessions, teen)
    assert (unrouted.state, unrouted.reason) == (
        StudyState.UNROUTED,
        "no enabled route matched this study",
    )


def test_route_matchers_use_the_recorded_facts(
    sessions: sessionmaker[Session], node: Assembler
) -> None:
    add_route(sessions, "adult-pa", body_parts=["chest"], view_positions=["PA"], min_age_years=18)
    add_route(sessions, "child", max_age_years=17)
    add_route(sessions, "lateral", view_positions=["LL", "LATERAL"])
    adult = receive(sessions, generate_uid(), age=58)
    child = receive(sessions, generate_uid(), age=9, body_part=None, view="AP")
    unknown = receive(sessions, generate_uid(), age=None, body_part="CHEST", view="PA")
    for uid in (adult, child, unknown):
        make_quiet(sessions, uid, 2 * NODE_QUIET_S)
    assert len(node.assemble()) == 2
    with sessions() as session:
        jobs = {
            job.study.study_instance_uid: job.route.name
            for job in session.scalars(select(Job).order_by(Job.id))
        }
    assert jobs == {adult: "adult-pa", child: "child"}
    assert study(sessions, unknown).state is StudyState.UNROUTED


def test_route_changes_apply_on_the_next_pass(
    sessions: sessionmaker[Session], node: Assembler
) -> None:
    """The assembler reads routes on every pass: no restart, no cache."""
    add_route(sessions, "adults", min_age_years=18)
    young = receive(sessions, generate_uid(), age=16)
    make_quiet(sessions, young, 2 * NODE_QUIET_S)
    assert node.assemble() == []
    assert study(sessions, young).state is StudyState.UNROUTED

    add_route(sessions, "adults", min_age_years=16)
    again = receive(sessions, generate_uid(), age=16)
    make_quiet(sessions, again, 2 * NODE_QUIET_S)
    assert len(node.assemble()) == 1
    assert routed(sessions) == ["adults"]
