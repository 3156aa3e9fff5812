"""A destination's DICOM TLS settings through the API, and its echo test over TLS to a real node
that requires client certificates (certificates made at test time)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_node.node import DicomNode
from tests.dicom_node.conftest import running_tls_node
from tests.tls_certs import Pki, make_pki

DESTINATIONS = "/api/v1/destinations"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[DicomNode]:
    with running_tls_node(tmp_path / "node", pki) as node:
        yield node


def test_tls_settings_are_validated_stored_and_used_by_the_echo_test(
    client: TestClient, admin: dict[str, str], pki: Pki, tls_node: DicomNode
) -> None:
    body = {
        "name": "tls-pacs",
        "host": "127.0.0.1",
        "port": tls_node.settings.dicom_port,
        "ae_title": "RADLIGHT",
        "tls_enabled": True,
        "tls_ca_file": str(pki.ca),
        "tls_cert_file": str(pki.client.cert),
        "tls_key_file": str(pki.client.key),
    }
    for bad in ({"tls_key_file": None}, {"tls_ca_file": "relative/ca.pem"}):
        refused = client.post(DESTINATIONS, json={**body, **bad}, headers=admin)
        assert refused.status_code == 422, refused.text
    created = client.post(DESTINATIONS, json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert {k: created.json()[k] for k in body} == body
    url = f"{DESTINATIONS}/{created.json()['id']}"

    echoed = client.post(f"{url}/echo", headers=admin).json()
    assert echoed["ok"], echoed
    # The node requires TLS: the same destination without it cannot even associate.
    assert client.patch(url, json={"tls_enabled": False}, headers=admin).status_code == 200
    assert not client.post(f"{url}/echo", headers=admin).json()["ok"]
