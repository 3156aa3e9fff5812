"""Credentials: Argon2id password hashes, short-lived signed access tokens, and API keys.

Pure functions over well-kept libraries (argon2-cffi, PyJWT); no database access here. The token
carries only the subject; the role and whether the account is still active are read from the
database on every request, so revoking a user or changing a role takes effect at once.
"""

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from radlight.errors import ConfigurationError
from radlight.settings import Settings

TOKEN_ALGORITHM = "HS256"  # noqa: S105 - an algorithm name
TOKEN_AUDIENCE = "radlight"  # noqa: S105 - the audience claim
API_KEY_MARK = "rlk"
MIN_PASSWORD_LENGTH = 12
_SECRET_FILE = "secret_key"  # noqa: S105 - a file name
_MIN_SECRET_BYTES = 32

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def check_password_strength(password: str) -> None:
    """Refuse passwords a site should not accept; the message says what is wrong."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise ValueError("password must be at most 1024 characters")
    if password.strip() != password:
        raise ValueError("password must not start or end with whitespace")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """True when ``password`` matches; a missing hash still costs one verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def load_secret_key(settings: Settings) -> bytes:
    """The token signing key: from settings, else a random one kept beside the data (mode 0600)."""
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value().encode()
        if len(key) < _MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"RADLIGHT_SECRET_KEY must be at least {_MIN_SECRET_BYTES} bytes"
            )
        return key
    path = settings.resolved_data_dir / _SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    key = path.read_bytes().strip()
    if len(key) < _MIN_SECRET_BYTES:
        raise ConfigurationError(f"{path} holds a key shorter than {_MIN_SECRET_BYTES} bytes")
    return key


def _create_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first; use theirs
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_urlsafe(48).encode())
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_at: datetime


def issue_token(subject: str, key: bytes, lifetime: timedelta) -> IssuedToken:
    now = datetime.now(UTC)
    expires = now + lifetime
    claims = {"sub": subject, "aud": TOKEN_AUDIENCE, "iat": now, "exp": expires, "typ": "access"}
    return IssuedToken(jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM), expires)


def token_subject(token: str, key: bytes) -> str | None:
    """The subject of a valid, unexpired access token; None for anything else."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            audience=TOKEN_AUDIENCE,
            options={"require": ["sub", "exp", "iat", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    subject = claims.get("sub")
    if claims.get("typ") != "access" or not isinstance(subject, str):
        return None
    return subject


@dataclass(frozen=True)
class NewApiKey:
    """A freshly made key: ``secret`` is shown once and never stored."""

    prefix: str
    secret: str
    secret_sha256: str

    @property
    def token(self) -> str:
        return f"{API_KEY_MARK}_{self.prefix}_{self.secret}"


def make_api_key() -> NewApiKey:
    secret = secrets.token_urlsafe(32)
    return NewApiKey(secrets.token_hex(8), secret, _sha256(secret))


def split_api_key(token: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key; None otherwise."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_MARK or not parts[1] or not parts[2]:
        return None
    if len(parts[1]) > 32 or len(parts[2]) > 128:
        return None
    return parts[1], parts[2]


def api_key_matches(secret: str, secret_sha256: str) -> bool:
    return hmac.compare_digest(_sha256(secret), secret_sha256)


def _sha256(secret: str) -> str:
    # The secret has 256 bits of entropy, so a plain digest suffices (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()
