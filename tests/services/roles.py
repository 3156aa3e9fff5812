"""One check of an endpoint against every role: anonymous 401, too low a role 403, enough ok."""

from typing import Any

from fastapi.testclient import TestClient

from db.models import Role

ROLES_LOW_TO_HIGH = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


def assert_roles(
    client: TestClient,
    role_headers: dict[Role, dict[str, str]],
    method: str,
    path: str,
    *,
    least: Role,
    ok: int,
    json: Any = None,
) -> None:
    """Call ``method path`` anonymously and as each role, lowest first (so a change an allowed
    role makes happens after every refusal)."""
    anonymous = client.request(method, path, json=json)
    assert anonymous.status_code == 401, f"anonymous {method} {path}: {anonymous.text}"
    for role in ROLES_LOW_TO_HIGH:
        response = client.request(method, path, json=json, headers=role_headers[role])
        expected = ok if role.includes(least) else 403
        assert response.status_code == expected, f"{role} {method} {path}: {response.text}"
        if expected == 403:
            assert f"needs the {least.value} role" in response.json()["detail"]
