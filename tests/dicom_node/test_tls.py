"""DICOM TLS with certificates made at test time: the node's SCP against pynetdicom and dcmtk's
storescu/echoscu, and delivery to Orthanc with DICOM TLS on (client certificate required)."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from db.models import Destination, Instance
from dicom_node.echo import echo
from dicom_node.node import DicomNode
from dicom_node.scu import Peer, send_file
from dicom_node.sending import DirectStoreDIMSE
from dicom_node.status import STATUS_SUCCESS
from dicom_node.tls import TlsClient
from radlight.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from radlight.settings import Settings
from tests.dicom_node.conftest import node_settings, running_tls_node
from tests.peers import ECHOSCU, STORESCU, dicom_env, run_orthanc, wait_for
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[DicomNode]:
    with running_tls_node(tmp_path, pki) as node:
        yield node


def _peer(node: DicomNode, tls: TlsClient | None) -> Peer:
    return Peer("127.0.0.1", node.settings.dicom_port, node.settings.ae_title, tls)


def _dcmtk(tool: str, node: DicomNode, pki: Pki, *args: str, tls: bool = True) -> str:
    """Run echoscu/storescu against the node; returns its output, fails with it if it failed."""
    tls_args = (
        ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)] if tls else []
    )
    port = str(node.settings.dicom_port)
    completed = subprocess.run(
        [tool, *tls_args, "-aet", "PACS", "-aec", "RADLIGHT", "127.0.0.1", port, *args],
        capture_output=True,
        text=True,
        env=dicom_env(),
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(completed.stdout + completed.stderr)
    return completed.stdout + completed.stderr


def test_tls_echo_and_store_work_with_the_right_ca_and_client_certificate(
    tls_node: DicomNode, pki: Pki, real_dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_direct_writes(*args: object) -> None:
        raise AssertionError("a C-STORE was written around pynetdicom's TLS socket")

    # Over TLS the SCU's requests go through pynetdicom's reactor (dicom_node/sending.py).
    monkeypatch.setattr(DirectStoreDIMSE, "_write_pdus", no_direct_writes)
    trusted = TlsClient(
        ca_file=str(pki.ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key)
    )
    outcome = echo(_peer(tls_node, trusted), calling_ae="PACS")
    assert outcome.ok, outcome.error
    assert send_file(_peer(tls_node, trusted), real_dicom_files[0], calling_ae="PACS") == (
        STATUS_SUCCESS
    )
    # dcmtk, a sender that is not pynetdicom, over TLS with the same certificates.
    _dcmtk(ECHOSCU, tls_node, pki)
    _dcmtk(STORESCU, tls_node, pki, str(real_dicom_files[1]))
    with tls_node.sessions() as session:
        stored = {i.sop_instance_uid for i in session.scalars(select(Instance))}
    expected = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in real_dicom_files
    }
    assert stored == expected


def test_tls_node_refuses_plain_tcp_and_untrusted_or_missing_client_certificates(
    tls_node: DicomNode, pki: Pki
) -> None:
    refusals = {
        "plain TCP": None,
        "no client certificate": TlsClient(ca_file=str(pki.ca)),
        "client certificate from an untrusted CA": TlsClient(
            ca_file=str(pki.ca),
            cert_file=str(pki.rogue_client.cert),
            key_file=str(pki.rogue_client.key),
        ),
    }
    for what, tls in refusals.items():
        outcome = echo(_peer(tls_node, tls), calling_ae="PACS", timeout_s=5)
        assert not outcome.ok, what
    with pytest.raises(AssertionError):
        _dcmtk(ECHOSCU, tls_node, pki, tls=False)
    # Still serving the right clients afterwards.
    good = TlsClient(
        ca_file=str(pki.ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key)
    )
    assert echo(_peer(tls_node, good), calling_ae="PACS").ok


def test_the_scu_refuses_a_node_whose_certificate_it_does_not_trust(
    tls_node: DicomNode, pki: Pki, real_dicom_files: list[Path]
) -> None:
    wrong_ca = TlsClient(
        ca_file=str(pki.rogue_ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key)
    )
    assert not echo(_peer(tls_node, wrong_ca), calling_ae="PACS", timeout_s=5).ok
    with pytest.raises(TransientDeliveryError):
        send_file(_peer(tls_node, wrong_ca), real_dicom_files[0], calling_ae="PACS", timeout_s=5)
    with tls_node.sessions() as session:
        assert session.scalars(select(Instance)).all() == []


def test_missing_tls_files_are_a_permanent_delivery_error(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    peer = Peer("127.0.0.1", 9, "PACS", TlsClient(ca_file=str(tmp_path / "absent.pem")))
    with pytest.raises(PermanentDeliveryError, match=r"absent\.pem"):
        send_file(peer, real_dicom_files[0], calling_ae="RADLIGHT")
    assert "absent.pem" in (echo(peer, calling_ae="RADLIGHT").error or "")


def test_settings_refuse_half_a_tls_configuration(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="KEY_FILE"):
        Settings(data_dir=tmp_path, dicom_tls_cert_file=pki.server.cert)
    with pytest.raises(ValueError, match="CA_FILE"):
        Settings(
            data_dir=tmp_path,
            dicom_tls_cert_file=pki.server.cert,
            dicom_tls_key_file=pki.server.key,
        )
    with pytest.raises(ConfigurationError):
        DicomNode(
            node_settings(
                tmp_path,
                f"sqlite:///{tmp_path / 'x.db'}",
                dicom_tls_cert_file=pki.server.key,  # a key where the certificate should be
                dicom_tls_key_file=pki.server.key,
                dicom_tls_require_client_cert=False,
            )
        ).start()


@pytest.mark.slow
def test_delivery_over_tls_to_orthanc_with_a_client_certificate(
    tmp_path: Path, pki: Pki, real_dicom_files: list[Path]
) -> None:
    """Orthanc's own DICOM TLS (DicomTlsEnabled), requiring our client certificate."""
    tls_config = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server.cert),
        "DicomTlsPrivateKey": str(pki.server.key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with run_orthanc(tmp_path / "orthanc", "TLSPACS", extra_config=tls_config) as orthanc:
        destination = Destination(
            host="127.0.0.1",
            port=orthanc.dicom_port,
            ae_title="TLSPACS",
            tls_enabled=True,
            tls_ca_file=str(pki.ca),
            tls_cert_file=str(pki.client.cert),
            tls_key_file=str(pki.client.key),
        )
        peer = Peer.of(destination)
        assert peer.tls is not None
        assert send_file(peer, real_dicom_files[0], calling_ae="RADLIGHT") == STATUS_SUCCESS
        sop = str(pydicom.dcmread(real_dicom_files[0], stop_before_pixels=True).SOPInstanceUID)
        assert wait_for(
            lambda: _orthanc_has(orthanc.url, sop), timeout=30, what="the instance in Orthanc"
        )
        # Without our client certificate, or without TLS, Orthanc does not take it.
        no_cert = Peer(peer.host, peer.port, peer.ae_title, TlsClient(ca_file=str(pki.ca)))
        with pytest.raises(TransientDeliveryError):
            send_file(no_cert, real_dicom_files[1], calling_ae="RADLIGHT", timeout_s=5)
        plain = Peer(peer.host, peer.port, peer.ae_title)
        with pytest.raises(TransientDeliveryError):
            send_file(plain, real_dicom_files[1], calling_ae="RADLIGHT", timeout_s=5)


def _orthanc_has(url: str, sop_instance_uid: str) -> bool:
    response = httpx.post(
        url + "/tools/find",
        json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        timeout=10,
    )
    response.raise_for_status()
    return len(response.json()) == 1
