"""An app over a real database, with one user per role and their bearer headers."""

import functools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.models import Role, User
from db.session import transaction
from radlight.settings import Settings
from services.app import create_app
from services.security import hash_password, issue_token, load_secret_key

PASSWORD = "correct horse battery staple"


@functools.cache
def password_hash_of_test_password() -> str:
    """``PASSWORD`` hashed once per test process: a hash costs 0.2 s by design."""
    return hash_password(PASSWORD)


@pytest.fixture
def app_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url)


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as test_client:
        yield test_client


@pytest.fixture
def role_headers(
    app_settings: Settings, sessions: sessionmaker[Session]
) -> dict[Role, dict[str, str]]:
    """One active user per role ("admin", "operator", "viewer"), as bearer headers."""
    password_hash = password_hash_of_test_password()
    with transaction(sessions) as session:
        for role in Role:
            session.add(User(username=role.value, password_hash=password_hash, role=role))
    key = load_secret_key(app_settings)
    return {
        role: {
            "Authorization": "Bearer "
            + issue_token(role.value, key, timedelta(minutes=5)).access_token
        }
        for role in Role
    }


@pytest.fixture
def admin(role_headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    return role_headers[Role.ADMIN]


@pytest.fixture
def viewer(role_headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    return role_headers[Role.VIEWER]
