"""POST /api/v1/ground: the tiny real classifier grounds the report on the synthetic phantom, as an
upload and as a stored instance; every bad input gets a 4xx that says what was wrong."""

import base64
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from db.models import Role
from dicom_node.pixels import to_display_uint8
from dicom_node.store import InstanceStore
from models.export import BuiltModel
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS
from radlight.settings import Settings
from services.api.grounding import MAX_BODY_BYTES
from tests.dicom_io import store_and_record, to_bytes
from tests.grounding_study import REPORT, phantom_image
from tests.services.installed_models import TINY, install
from tests.services.installed_models import tiny_builds as tiny_builds  # a fixture
from tests.services.seed import audit_events

URL = "/api/v1/ground"


@pytest.fixture(scope="module")
def phantom() -> Dataset:
    return phantom_image("api")


@pytest.fixture
def models(app_settings: Settings, tiny_builds: list[BuiltModel]) -> None:
    install(app_settings, tiny_builds)


def _png(pixels: np.ndarray) -> str:
    out = BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _store(settings: Settings, sessions: sessionmaker[Session], ds: Dataset) -> None:
    store_and_record(InstanceStore(settings.store_dir), sessions, to_bytes(ds))


def _check_grounded(body: dict[str, object], rows: int, columns: int) -> None:
    assert body["model_name"] == TINY
    assert body["model_version"] == "0.0.0-seed1"
    assert body["notice"] == NOT_FOR_PRIMARY_DIAGNOSIS
    image = body["image"]
    assert isinstance(image, dict)
    assert (image["rows"], image["columns"]) == (rows, columns)
    phrases = body["phrases"]
    assert isinstance(phrases, list)
    by_text = {p["text"]: p for p in phrases}
    effusion = by_text["Large right pleural effusion"]
    assert effusion["findings"] == ["Effusion"]
    assert effusion["laterality"] == "right"
    assert REPORT[effusion["start"] : effusion["end"]] == effusion["text"]
    assert not effusion["negated"]
    assert effusion["reason"] is None
    heatmap = Image.open(BytesIO(base64.b64decode(effusion["heatmap_png_base64"])))
    assert heatmap.size == (columns, rows)
    assert heatmap.mode == "L"
    box = effusion["box"]
    # The patient's right is the image's left half.
    assert box["x"] + box["width"] <= columns / 2 + 1
    assert all(0 <= x <= columns and 0 <= y <= rows for x, y in effusion["polygon"])
    negated = by_text["No pneumothorax"]
    assert negated["negated"]
    assert negated["reason"] == "negated"
    assert negated["box"] is None
    assert negated["heatmap_png_base64"] is None


def test_ground_an_upload_and_a_stored_instance(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    models: None,
    phantom: Dataset,
) -> None:
    display = to_display_uint8(phantom)
    viewer = role_headers[Role.VIEWER]
    upload = client.post(URL, json={"text": REPORT, "image_base64": _png(display)}, headers=viewer)
    assert upload.status_code == 200, upload.text
    _check_grounded(upload.json(), *display.shape)

    _store(app_settings, sessions, phantom)
    uid = str(phantom.SOPInstanceUID)
    stored = client.post(URL, json={"text": REPORT, "sop_instance_uid": uid}, headers=viewer)
    assert stored.status_code == 200, stored.text
    _check_grounded(stored.json(), *display.shape)
    assert stored.json()["image"]["sop_instance_uid"] == uid
    # Same pixels, same model: the stored image is windowed exactly as the upload was made.
    assert stored.json()["phrases"] == upload.json()["phrases"]

    events = audit_events(sessions, "grounding.run")
    assert [(e.actor, e.target_type, e.target_id) for e in events] == [
        ("user:viewer", "upload", None),
        ("user:viewer", "instance", uid),
    ]
    assert all("effusion" not in str(e.detail).lower() for e in events)  # no report text

    unknown = client.post(URL, json={"text": REPORT, "sop_instance_uid": "1.2.3.4"}, headers=viewer)
    assert unknown.status_code == 404
    assert "no stored instance 1.2.3.4" in unknown.json()["detail"]
    assert client.post(URL, json={"text": REPORT, "sop_instance_uid": uid}).status_code == 401


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # nothing backend-specific
def test_bad_input_gets_a_clear_4xx(
    client: TestClient, viewer: dict[str, str], models: None, tmp_path: Path
) -> None:
    small = np.full((80, 80), 128, dtype=np.uint8)
    gif = BytesIO()
    Image.fromarray(small).save(gif, format="GIF")

    def post(body: dict[str, object]) -> tuple[int, str]:
        response = client.post(URL, json=body, headers=viewer)
        return response.status_code, response.text

    cases: list[tuple[dict[str, object], str]] = [
        ({"text": "Effusion.", "image_base64": "%%%not base64%%%"}, "not valid base64"),
        ({"text": "Effusion.", "image_base64": base64.b64encode(b"hello").decode()}, "not a PNG"),
        ({"text": "Effusion.", "image_base64": base64.b64encode(gif.getvalue()).decode()}, "GIF"),
        (
            {
                "text": "Effusion.",
                "image_base64": base64.b64encode(_bomb_png(60000, 60000)).decode(),
            },
            "decompression bomb",
        ),
        (
            {"text": "Effusion.", "image_base64": base64.b64encode(_bomb_png(9000, 100)).decode()},
            "at most 8192 per side",
        ),
        ({"text": "Effusion.", "image_base64": _png(np.zeros((20, 20), np.uint8))}, "at least 64"),
        ({"text": "   \n", "image_base64": _png(small)}, "empty"),
        ({"text": "x" * 20_001, "image_base64": _png(small)}, "at most 20000"),
        ({"text": "Effusion."}, "exactly one of"),
        ({"text": "Effusion.", "image_base64": _png(small), "sop_instance_uid": "1.2"}, "exactly"),
        ({"text": "Effusion.", "sop_instance_uid": "1.2.x"}, "pattern"),
    ]
    for body, expected in cases:
        status, text = post(body)
        assert status == 422, (body.get("text"), status, text[:300])
        assert expected in text, text[:300]

    too_big = client.post(
        URL,
        content=b"{}",
        headers={**viewer, "Content-Type": "application/json"}
        | {"Content-Length": str(MAX_BODY_BYTES + 1)},
    )
    assert too_big.status_code == 413
    assert "larger than" in too_big.json()["detail"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_a_classifier_the_answer_is_503(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.post(
        URL,
        json={"text": "Left effusion.", "image_base64": _png(np.full((80, 80), 9, np.uint8))},
        headers=viewer,
    )
    assert response.status_code == 503
    assert "no classifier is installed" in response.json()["detail"]
