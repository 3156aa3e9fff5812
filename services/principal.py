"""The authenticated caller, as every router and the audit trail see it."""

from dataclasses import dataclass

from db.models import Role


@dataclass(frozen=True)
class Principal:
    """``actor`` names the caller in the audit trail: "user:alice" or "apikey:ris-bridge"."""

    actor: str
    role: Role
    username: str | None = None
