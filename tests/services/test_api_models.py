"""The model registry through the API, over real installed models on SQLite and PostgreSQL."""

from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_route
from db.models import Role
from db.session import transaction
from models.export import BuiltModel
from models.precision import FP16_FILE, FP16_RECORD, make_fp16_copy, prepared_batch
from models.preprocess import prepare_image
from models.registry import ModelRegistry
from radlight.settings import Settings
from tests.services.installed_models import TINY, install
from tests.services.installed_models import tiny_builds as tiny_builds  # a fixture
from tests.services.roles import assert_roles
from workers.imaging import load_frontal_chest

MODELS = "/api/v1/models"


def test_models_list_versions_with_their_cards_and_routes(
    client: TestClient,
    sessions: sessionmaker[Session],
    app_settings: Settings,
    tiny_builds: list[BuiltModel],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    install(app_settings, tiny_builds)
    with transaction(sessions) as session:
        upsert_route(session=session, name="pinned", model_name=TINY, model_version="0.0.0-seed0")
        upsert_route(session=session, name="follows", model_name=TINY)
        upsert_route(session=session, name="other", model_name="someone-else")

    response = client.get(MODELS, headers=role_headers[Role.OPERATOR])
    assert response.status_code == 200, response.text
    (model,) = response.json()
    assert (model["name"], model["latest_version"]) == (TINY, "0.0.0-seed1")
    old, new = model["versions"]
    assert (old["version"], old["latest"], new["version"], new["latest"]) == (
        "0.0.0-seed0",
        False,
        "0.0.0-seed1",
        True,
    )
    assert [r["name"] for r in old["routes"]] == ["pinned"]
    assert old["routes"][0]["pinned"] is True
    assert [(r["name"], r["pinned"]) for r in new["routes"]] == [("follows", False)]

    card = tiny_builds[0].card
    assert old["sha256"] == card.sha256
    assert old["trained"] is False
    assert old["file_ok"] is True
    assert old["problem"] is None
    assert [label["name"] for label in old["labels"]] == list(card.label_names)
    pneumonia = next(label for label in old["labels"] if label["name"] == "Pneumonia")
    spec = next(label for label in card.labels if label.name == "Pneumonia")
    assert pneumonia["code"] == f"{spec.code.scheme_designator} {spec.code.value}"
    assert pneumonia["threshold"] == spec.threshold
    assert old["input"] == {
        "modalities": ["DX", "CR"],
        "view_positions": ["PA", "AP"],
        "body_part": "CHEST",
        "age_range_years": None,
        "population": None,
    }
    assert old["provenance"]["source"] == card.provenance.source
    assert old["intended_use"] == card.intended_use

    only = client.get(MODELS, params={"name": TINY}, headers=role_headers[Role.OPERATOR]).json()
    assert [m["name"] for m in only] == [TINY]
    assert (
        client.get(MODELS, params={"name": "nothing"}, headers=role_headers[Role.ADMIN]).json()
        == []
    )


def test_a_model_file_changed_on_disk_is_reported(
    client: TestClient, app_settings: Settings, tiny_builds: list[BuiltModel], admin: dict[str, str]
) -> None:
    install(app_settings, tiny_builds[:1])
    entry = ModelRegistry(app_settings.models_dir).list()[0]
    entry.onnx_path.chmod(0o644)
    entry.onnx_path.write_bytes(entry.onnx_path.read_bytes() + b"tampered")
    (model,) = client.get(MODELS, headers=admin).json()
    (version,) = model["versions"]
    assert version["file_ok"] is False
    assert "refusing to use it" in version["problem"]


def test_an_empty_registry_and_every_role(
    client: TestClient, role_headers: dict[Role, dict[str, str]]
) -> None:
    assert_roles(client, role_headers, "GET", MODELS, least=Role.OPERATOR, ok=200)
    assert client.get(MODELS, headers=role_headers[Role.OPERATOR]).json() == []


def test_hostile_model_names_get_422(client: TestClient, admin: dict[str, str]) -> None:
    for name in ("../../etc/passwd", "..", ".hidden", "a" * 65, "x;y", ""):
        response = client.get(MODELS, params={"name": name}, headers=admin)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["detail"]


def test_a_versions_fp16_copy_is_shown_with_its_check_and_whether_workers_can_use_it(
    client: TestClient,
    app_settings: Settings,
    tiny_builds: list[BuiltModel],
    admin: dict[str, str],
    real_dicom_files: list[Path],
) -> None:
    install(app_settings, tiny_builds[:1])
    (entry,) = ModelRegistry(app_settings.models_dir).list()
    (version,) = client.get(MODELS, headers=admin).json()[0]["versions"]
    assert version["fp16"] is None

    batch = prepared_batch(
        prepare_image(load_frontal_chest(pydicom.dcmread(f)), entry.card.preprocessing).tensor
        for f in real_dicom_files
    )
    check = make_fp16_copy(entry, batch)
    (version,) = client.get(MODELS, headers=admin).json()[0]["versions"]
    fp16 = version["fp16"]
    assert (fp16["sha256"], fp16["usable"], fp16["problem"], fp16["images"]) == (
        check.sha256,
        True,
        None,
        2,
    )
    assert fp16["max_probability_difference"] == check.max_probability_difference
    assert fp16["decisions_changed"] == 0

    copy = entry.directory / FP16_FILE
    copy.write_bytes(copy.read_bytes() + b"\0")
    (version,) = client.get(MODELS, headers=admin).json()[0]["versions"]
    assert version["fp16"]["usable"] is False
    assert "has sha256" in version["fp16"]["problem"]
    assert version["file_ok"] is True  # the card's file is fine; workers run it in fp32
    (entry.directory / FP16_RECORD).write_text("{not json")
    (version,) = client.get(MODELS, headers=admin).json()[0]["versions"]
    assert (version["fp16"]["usable"], version["fp16"]["sha256"]) == (False, None)
    assert "is not an fp16 record" in version["fp16"]["problem"]
