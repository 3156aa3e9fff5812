"""Hostile DICOM against a real `radlight dicom-node` process: the node never crashes, answers the
right failure status, records the reason (visible in GET /api/v1/ingest-failures), keeps the bytes
in quarantine, and takes the next association.

The mutations start from the real files in the shared assets, read at test time. CI runs a small,
derandomised number of cases; ``RADLIGHT_FUZZ_EXAMPLES=500 make fuzz`` runs more.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select

from db.migrate import upgrade
from db.models import IngestFailure, Role, User
from db.session import make_engine, make_session_factory, transaction
from dicom_node.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES_TOO_LARGE,
    STATUS_SUCCESS,
)
from radlight.settings import Settings
from services.app import create_app
from services.security import hash_password, issue_token, load_secret_key
from tests.dicom_node import hostile
from tests.peers import Service, echo_ok, free_port, node_env, radlight_service, wait_for

FUZZ_EXAMPLES = int(os.environ.get("RADLIGHT_FUZZ_EXAMPLES", "15"))
NODE_LIMIT_BYTES = 4 * 1024 * 1024  # the node's max instance size in this test
FAILURES = "/api/v1/ingest-failures"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class HostileNode:
    service: Service
    port: int
    settings: Settings
    api: TestClient
    headers: dict[str, str]
    workdir: Path

    def failures(self) -> list[IngestFailure]:
        engine = make_engine(self.settings.effective_database_url)
        try:
            with make_session_factory(engine)() as session:
                return list(session.scalars(select(IngestFailure).order_by(IngestFailure.id)))
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def hostile_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    workdir = tmp_path_factory.mktemp("hostile")
    database_url = f"sqlite:///{workdir / 'radlight.db'}"
    upgrade(database_url)
    port = free_port()
    env = node_env(workdir / "data", database_url=database_url, broker_url="", port=port)
    env["RADLIGHT_STUDY_QUIET_SECONDS"] = "3600"  # ingest only
    env["RADLIGHT_MAX_INSTANCE_BYTES"] = str(NODE_LIMIT_BYTES)
    del env["RADLIGHT_BROKER_URL"]  # the embedded broker: no jobs are made here anyway
    settings = Settings(data_dir=workdir / "data", database_url=database_url)
    engine = make_engine(database_url)
    with transaction(make_session_factory(engine)) as session:
        session.add(User(username="admin", password_hash=hash_password("x" * 16), role=Role.ADMIN))
    engine.dispose()
    token = issue_token("admin", load_secret_key(settings), timedelta(minutes=30)).access_token
    with (
        radlight_service(env, workdir, "dicom-node") as service,
        TestClient(create_app(settings)) as api,
    ):

        def up() -> bool:
            service.assert_alive()
            return echo_ok(port)

        wait_for(up, timeout=60, what="the node")
        yield HostileNode(
            service, port, settings, api, {"Authorization": f"Bearer {token}"}, workdir
        )


def send(node: HostileNode, data: bytes, name: str = "case.dcm") -> int | None:
    """C-STORE ``data`` as it is (pynetdicom sends a file's data set bytes unparsed)."""
    path = node.workdir / name
    path.write_bytes(data)
    part = hostile.split(data)
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(part.sop_class, part.transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADLIGHT")
    assert assoc.is_established, "the node refused the association"
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, never decode them here
    try:
        response = assoc.send_c_store(path)
        return int(response.Status) if response and "Status" in response else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()


def assert_refused_and_recorded(
    node: HostileNode, data: bytes, expected: int, what: str, *, kept: bool = True
) -> None:
    before = node.api.get(FAILURES, headers=node.headers).json()["total"]
    status = send(node, data)
    node.service.assert_alive()
    assert status == expected, f"{what}: status {status and hex(status)}, want {expected:#06x}"
    listed = node.api.get(FAILURES, headers=node.headers, params={"limit": 1}).json()
    assert listed["total"] == before + 1, what
    newest = listed["items"][0]
    assert newest["status"] == expected
    assert newest["reason"]
    assert "unexpected" not in newest["reason"], newest["reason"]  # a handler crash, caught
    assert newest["quarantined"] is kept, what
    row = node.failures()[-1]
    if kept:
        assert row.quarantine_path is not None
        quarantined = (node.settings.store_dir / row.quarantine_path).read_bytes()
        assert quarantined.endswith(hostile.split(data).body), "quarantine keeps the data set"
    else:
        assert row.quarantine_path is None
    assert echo_ok(node.port), f"the node does not answer C-ECHO after {what}"


@pytest.fixture(scope="module")
def originals(real_dicom_files: list[Path]) -> list[hostile.Part10]:
    return [hostile.split(path.read_bytes()) for path in real_dicom_files]


@pytest.fixture(scope="module")
def explicit(real_dicom_files: list[Path]) -> list[hostile.Part10]:
    return [hostile.explicit_copy(path.read_bytes()) for path in real_dicom_files]


BAD_VRS = st.binary(min_size=2, max_size=2).filter(lambda vr: vr not in hostile.KNOWN_VRS)
KINDS = (
    "truncated",
    "wrong length",
    "wrong length (explicit)",
    "bad VR",
    "absurd Rows/Columns",
    "wrong transfer syntax",
    "explicit data declared implicit",
    "deflate bomb",
    "huge private tag",
    "private tag longer than the data",
)


@dataclass(frozen=True)
class Mutation:
    """A hostile variant of a real file (made on demand) and the status the node must answer."""

    what: str
    make: Callable[[], bytes]
    expected: int
    kept: bool = True  # in quarantine; an instance over the size limit is not kept (disk)

    def __repr__(self) -> str:
        return f"Mutation({self.what!r}, expected=0x{self.expected:04X})"


@st.composite
def mutations(
    draw: st.DrawFn, originals: list[hostile.Part10], explicit: list[hostile.Part10]
) -> Mutation:
    which = draw(st.integers(0, len(originals) - 1))
    part, xpart = originals[which], explicit[which]
    count = len(hostile.elements(part.body, explicit=False))
    kind = draw(st.sampled_from(KINDS))
    malformed, too_large = STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES_TOO_LARGE
    if kind == "truncated":
        # From 9: pynetdicom sends a data set shorter than one element header as empty (C211).
        cut = draw(st.integers(9, len(part.body) - 1))
        return Mutation(f"{kind} at {cut}", lambda: hostile.truncated(part, cut), malformed)
    if kind.startswith("wrong length"):
        is_explicit = "explicit" in kind
        index, length = draw(st.integers(0, count - 1)), draw(st.integers(0, 0xFFFFFFFE))
        source = xpart if is_explicit else part
        return Mutation(
            f"{kind}: element {index} says {length}",
            lambda: hostile.wrong_length(source, index, length, explicit=is_explicit),
            malformed,
        )
    if kind == "bad VR":
        index, vr = draw(st.integers(0, count - 1)), draw(BAD_VRS)
        return Mutation(
            f"{kind} {vr!r} on element {index}", lambda: hostile.bad_vr(xpart, index, vr), malformed
        )
    if kind == "absurd Rows/Columns":
        element = draw(st.sampled_from([0x0010, 0x0011]))
        value = draw(st.integers(0, 0xFFFF).filter(lambda v: v != 1024))
        return Mutation(
            f"(0028,{element:04X}) = {value}",
            lambda: hostile.with_us_value(part, 0x0028, element, value),
            malformed,
        )
    if kind == "wrong transfer syntax":
        syntax = draw(st.sampled_from(hostile.WRONG_SYNTAXES))
        return Mutation(
            f"{kind} {syntax}", lambda: hostile.with_meta_syntax(part, syntax), malformed
        )
    if kind == "explicit data declared implicit":
        return Mutation(kind, lambda: hostile.with_meta_syntax(xpart, hostile.NATIVE), malformed)
    if kind == "deflate bomb":
        size = draw(st.integers(2 * NODE_LIMIT_BYTES, 64 * NODE_LIMIT_BYTES))
        return Mutation(f"{kind} of {size}", lambda: hostile.deflate_bomb(xpart, size), too_large)
    if kind == "huge private tag":
        size = draw(st.integers(NODE_LIMIT_BYTES, 2 * NODE_LIMIT_BYTES))
        return Mutation(
            f"{kind} of {size}", lambda: hostile.huge_private_tag(xpart, size), too_large, False
        )
    declared = draw(st.integers(1 << 20, 0xFFFFFFFE))
    return Mutation(
        f"{kind}: {declared}", lambda: hostile.private_tag_declaring(xpart, declared), malformed
    )


def test_the_real_files_have_the_layout_the_mutations_expect(
    originals: list[hostile.Part10], explicit: list[hostile.Part10]
) -> None:
    for part, xpart in zip(originals, explicit, strict=True):
        implicit_tags = [(e.group, e.element) for e in hostile.elements(part.body, explicit=False)]
        explicit_tags = [(e.group, e.element) for e in hostile.elements(xpart.body, explicit=True)]
        assert implicit_tags == explicit_tags
        assert {(0x0028, 0x0010), (0x0028, 0x0011), (0x7FE0, 0x0010)} <= set(implicit_tags)
        assert sum(e.length for e in hostile.elements(part.body, explicit=False)) + 8 * len(
            implicit_tags
        ) == len(part.body)


def test_hostile_dicom_never_crashes_the_node(
    hostile_node: HostileNode,
    originals: list[hostile.Part10],
    explicit: list[hostile.Part10],
    real_dicom_files: list[Path],
) -> None:
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutations(originals, explicit))
    def case(mutation: Mutation) -> None:
        note(mutation.what)  # hypothesis prints it with a failing case
        data = mutation.make()
        assert_refused_and_recorded(
            hostile_node, data, mutation.expected, mutation.what, kept=mutation.kept
        )

    case()
    # ... and a valid instance is still stored afterwards.
    ds = pydicom.dcmread(real_dicom_files[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    good = hostile_node.workdir / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    assert send(hostile_node, good.read_bytes(), "good-sent.dcm") == STATUS_SUCCESS
    hostile_node.service.assert_alive()
    assert "Traceback" not in hostile_node.service.log()
