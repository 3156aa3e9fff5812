"""The API keeps its own OpenAPI contract: schemathesis against every operation the app exposes.

One test per operation, listed from the app's schema when the tests are collected, so a router
added tomorrow is fuzzed without touching this file. Each runs a bounded number of examples
(valid and schema-violating inputs, a fixed seed) as an admin over a migrated SQLite database
with a little data, and checks: no 5xx, every status code documented, the documented content type,
the body and headers matching their schemas, schema-violating input refused with a 4xx, and
authentication enforced where the schema declares it. A second test calls every secured
operation anonymously and checks the 401 is documented.
"""

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import (
    Delivery,
    DeliveryState,
    Destination,
    Job,
    JobState,
    Result,
    ResultKind,
    Role,
    Route,
    Study,
    StudyState,
    User,
)
from db.session import make_engine, make_session_factory, transaction
from radlight.settings import Settings
from services.app import create_app
from services.security import hash_password, issue_token, load_secret_key

MAX_EXAMPLES = 25
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]
CONTRACT_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run
    database=None,  # no example database: a run never replays an earlier run's failures
    suppress_health_check=list(HealthCheck),  # data generation is slow on a shared 2-core machine
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    secured: bool  # the schema declares a security requirement

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def schema_operations() -> list[Operation]:
    """Every operation in the app's schema, read when the tests are collected."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(data_dir=Path(folder), database_url="sqlite://"))
        paths = app.openapi()["paths"]
    return sorted(
        (
            Operation(method.upper(), path, bool(spec.get("security")))
            for path, item in paths.items()
            for method, spec in item.items()
            if method in HTTP_METHODS
        ),
        key=str,
    )


OPERATIONS = schema_operations()


def restore_admin(sessions: sessionmaker[Session]) -> None:
    """The admin exists, is active and is an admin: a fuzzed call may have changed it."""
    with transaction(sessions) as session:
        admin = session.scalars(select(User).where(User.username == "admin")).one_or_none()
        if admin is None:
            session.add(
                User(username="admin", password_hash=hash_password("x" * 16), role=Role.ADMIN)
            )
        else:
            admin.active = True
            admin.role = Role.ADMIN


def seed(session: Session) -> None:
    """One of each resource, so the fuzzer's favourite id (1) finds something to return."""
    study = Study(
        study_instance_uid="1.2.826.0.1.3680043.8.498.7",
        state=StudyState.COMPLETE,
        calling_ae="MODALITY",
        called_ae="RADLIGHT",
    )
    destination = Destination(name="pacs", host="127.0.0.1", port=1, ae_title="PACS")
    route = Route(name="chest", model_name="m", destinations=[destination])
    job = Job(study=study, route=route, input_hash="h", state=JobState.SUCCEEDED, model_name="m")
    result = Result(
        job=job,
        kind=ResultKind.FINDINGS_SR,
        sop_instance_uid="2.25.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        series_instance_uid="2.25.2",
        relative_path="results/missing.dcm",
        model_name="m",
        model_version="1",
    )
    session.add(Delivery(result=result, destination=destination, state=DeliveryState.FAILED))


@dataclass(frozen=True)
class Contract:
    schema: schemathesis.BaseSchema
    sessions: sessionmaker[Session]
    admin: dict[str, str]


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contract]:
    """The app over a migrated SQLite database, its schema loaded from the app itself."""
    folder = tmp_path_factory.mktemp("contract")
    url = f"sqlite:///{folder / 'radlight.db'}"
    upgrade(url)
    app_settings = Settings(data_dir=folder, database_url=url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        seed(session)
    restore_admin(sessions)
    token = issue_token("admin", load_secret_key(app_settings), timedelta(hours=1)).access_token
    app = create_app(app_settings)
    try:
        with TestClient(app):  # runs the app's lifespan, which closes its engine and producer
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            # Credentials are ours to send (the admin's token, or none): never generated ones.
            schema.config.generation.update(with_security_parameters=False)
            yield Contract(
                schema=schema,
                sessions=sessions,
                admin={"Authorization": f"Bearer {token}"},
            )
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("op", OPERATIONS, ids=str)
def test_operation_keeps_its_contract(contract: Contract, op: Operation) -> None:
    operation = contract.schema[op.path][op.method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @CONTRACT_SETTINGS
    @given(case=cases)
    def call(case: Case[Any]) -> None:
        restore_admin(contract.sessions)
        case.call_and_validate(headers=contract.admin, checks=CHECKS)

    call()


@pytest.mark.slow
@pytest.mark.parametrize("op", [op for op in OPERATIONS if op.secured], ids=str)
def test_anonymous_caller_gets_a_documented_401(contract: Contract, op: Operation) -> None:
    operation = contract.schema[op.path][op.method]

    @settings(CONTRACT_SETTINGS, max_examples=3)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def call(case: Case[Any]) -> None:
        response = case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
        )
        assert response.status_code == 401, response.text

    call()


def test_metrics_is_in_the_contract() -> None:
    assert Operation("GET", "/metrics", secured=True) in OPERATIONS
