"""The node's C-STORE responses, encoded by dicom_node/sending.py instead of pydicom: the same bytes
as pynetdicom's, anything beyond the usual seven elements left to pynetdicom, and a real
pynetdicom SCU reading the node's answers (success and refusal) from the wire. Over TLS the
encoded response goes through the reactor: tests/dicom_node/test_tls.py stores over TLS."""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Instance
from db.session import make_engine, make_session_factory
from dicom_node.node import DicomNode
from dicom_node.scu import SenderAE
from dicom_node.sending import NodeDIMSE, store_response_value
from dicom_node.status import STATUS_MISSING_REQUIRED_ATTRIBUTE, STATUS_SUCCESS
from tests.dicom_node.conftest import node_settings, running_node
from tests.workers.conftest import copy_with_new_uids

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _response(
    status: int, message_id: int, sop_instance: str, sop_class: str = DX, **optional: Any
) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    for name, value in optional.items():
        setattr(rsp, name, value)
    return rsp


def _pynetdicom_value(primitive: C_STORE, context_id: int) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(context_id, 16384))
    ((encoded_context, value),) = pdata.presentation_data_value_list
    assert encoded_context == context_id
    return bytes(value)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xA900, 0x0120, 0xC000, 0xC211])
@pytest.mark.parametrize("message_id", [1, 0x1234, 0xFFFF])
@pytest.mark.parametrize(
    ("sop_instance", "sop_class"),
    [
        ("1.2.826.0.1.3680043.8.498.1", DX),  # odd length: padded
        ("1.2.826.0.1.3680043.8.498.12", DX),  # even
        ("2.25." + "9" * 59, "1.2.840.10008.5.1.4.1.1.7"),  # 64 characters, Secondary Capture
    ],
)
def test_encoded_responses_are_pynetdicoms_bytes(
    status: int, message_id: int, sop_instance: str, sop_class: str
) -> None:
    primitive = _response(status, message_id, sop_instance, sop_class)
    assert store_response_value(primitive) == _pynetdicom_value(primitive, context_id=5)


@pytest.mark.parametrize(
    "optional",
    [
        {"ErrorComment": "no pixel data"},
        {"OffendingElement": [0x00100010]},
        {"AffectedSOPInstanceUID": None},
        {"AffectedSOPClassUID": None},
    ],
)
def test_responses_with_other_elements_are_left_to_pynetdicom(optional: dict[str, Any]) -> None:
    primitive = _response(0xC000, 3, "1.2.3.4", **optional)
    assert store_response_value(primitive) is None
    assert _pynetdicom_value(primitive, context_id=1)  # pynetdicom still encodes it


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[DicomNode]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    with running_node(node_settings(tmp_path, url)) as node:
        yield node


@contextlib.contextmanager
def _storing_scu(node: DicomNode, sop_class: str) -> Iterator[tuple[Any, list[Dataset]]]:
    """A pynetdicom SCU associated with the node, and the command sets of the responses it
    reads off the wire. RadLight's ``SenderAE``: pynetdicom's own DIMSE reading and decoding,
    without the pause race of its stock reactor that can take a second request's response away
    from the request (pynetdicom#875; docs/DECISIONS.md)."""
    commands: list[Dataset] = []

    def received(event: Event) -> None:
        message = event.message
        if isinstance(message, C_STORE_RSP):
            commands.append(message.command_set)

    ae = SenderAE(ae_title="PACS")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate(
        "127.0.0.1",
        node.settings.dicom_port,
        ae_title="RADLIGHT",
        evt_handlers=[(evt.EVT_DIMSE_RECV, received)],
    )
    assert assoc.is_established
    try:
        yield assoc, commands
    finally:
        assoc.release()


@pytest.mark.integration
def test_a_pynetdicom_scu_reads_the_nodes_answers(
    sqlite_node: DicomNode, real_dicom_files: list[Path]
) -> None:
    stored = copy_with_new_uids(real_dicom_files[0])
    refused = copy_with_new_uids(real_dicom_files[0])
    del refused.StudyInstanceUID
    with _storing_scu(sqlite_node, str(stored.SOPClassUID)) as (assoc, commands):
        first = assoc.send_c_store(stored, msg_id=7)
        second = assoc.send_c_store(refused, msg_id=0xFFFF)
        acceptors = sqlite_node._server.active_associations

    assert (first.Status, second.Status) == (STATUS_SUCCESS, STATUS_MISSING_REQUIRED_ATTRIBUTE)
    assert [(c.CommandField, c.CommandDataSetType) for c in commands] == [(0x8001, 0x0101)] * 2
    assert [c.Status for c in commands] == [STATUS_SUCCESS, STATUS_MISSING_REQUIRED_ATTRIBUTE]
    assert [c.MessageIDBeingRespondedTo for c in commands] == [7, 0xFFFF]
    assert [c.AffectedSOPInstanceUID for c in commands] == [
        stored.SOPInstanceUID,
        refused.SOPInstanceUID,
    ]
    assert all(c.AffectedSOPClassUID == stored.SOPClassUID for c in commands)
    assert acceptors
    assert all(isinstance(a.dimse, NodeDIMSE) for a in acceptors)
    engine = make_engine(sqlite_node.settings.effective_database_url)
    try:
        with make_session_factory(engine)() as session:
            uids = session.scalars(select(Instance.sop_instance_uid)).all()
    finally:
        engine.dispose()
    assert uids == [stored.SOPInstanceUID]
