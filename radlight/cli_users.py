"""``radlight users`` and ``radlight api-keys``: accounts are made here, never by default.

The first admin is created with ``radlight users create NAME --role admin``; the password is read
from the terminal (twice) or, for automation, from standard input with ``--password-stdin``.
There is no default account and no default password.
"""

import argparse
import getpass
import re
import sys
from datetime import UTC, datetime

from radlight.cli_common import db_transaction, out
from radlight.errors import ConfigurationError
from radlight.settings import Settings

ROLES = ("admin", "operator", "viewer")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise ConfigurationError("the passwords differ")
    return first


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.models import Role, User
    from services.security import check_password_strength, hash_password

    if not USERNAME.match(args.username):
        raise ConfigurationError("username: 1-64 letters, digits and . _ @ -")
    password = _read_password(args)
    try:
        check_password_strength(password)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    with db_transaction(settings) as session:
        existing = session.scalars(select(User).where(User.username == args.username))
        if existing.one_or_none() is not None:
            raise ConfigurationError(f"user {args.username} exists; use `users set-password`")
        session.add(
            User(
                username=args.username, password_hash=hash_password(password), role=Role(args.role)
            )
        )
    out(f"user {args.username} created with role {args.role}")
    return 0


def cmd_user_set_password(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.models import User
    from services.security import check_password_strength, hash_password

    password = _read_password(args)
    try:
        check_password_strength(password)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    with db_transaction(settings) as session:
        user = session.scalars(select(User).where(User.username == args.username)).one_or_none()
        if user is None:
            raise ConfigurationError(f"no user {args.username}")
        user.password_hash = hash_password(password)
    out(f"password of {args.username} changed")
    return 0


def cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> int:
    from db.models import ApiKey, Role
    from services.security import make_api_key

    key = make_api_key()
    with db_transaction(settings) as session:
        session.add(
            ApiKey(
                name=args.name,
                prefix=key.prefix,
                secret_sha256=key.secret_sha256,
                role=Role(args.role),
                created_by="cli",
            )
        )
    out(key.token)  # shown once; only its hash is kept
    return 0


def cmd_api_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from db.models import ApiKey

    with db_transaction(settings) as session:
        key = session.scalars(select(ApiKey).where(ApiKey.name == args.name)).one_or_none()
        if key is None:
            raise ConfigurationError(f"no API key named {args.name}")
        key.revoked_at = datetime.now(UTC)
    out(f"API key {args.name} revoked")
    return 0


def add_user_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    users = sub.add_parser("users", help="people who sign in to the API and dashboard")
    users_sub = users.add_subparsers(dest="users_cmd", required=True)
    create = users_sub.add_parser("create", help="create a user (the first admin, too)")
    create.set_defaults(func=cmd_user_create)
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    passwd = users_sub.add_parser("set-password", help="change a user's password")
    passwd.set_defaults(func=cmd_user_set_password)
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")

    keys = sub.add_parser("api-keys", help="keys for machine clients")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    key_create = keys_sub.add_parser("create", help="create a key; it is printed once")
    key_create.set_defaults(func=cmd_api_key_create)
    key_create.add_argument("name")
    key_create.add_argument("--role", choices=ROLES, required=True)
    key_revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    key_revoke.set_defaults(func=cmd_api_key_revoke)
    key_revoke.add_argument("name")
