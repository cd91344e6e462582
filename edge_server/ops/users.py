"""Operators signing in with a password (the dashboard). The hash is scrypt
(``edge_server.passwords``); it is checked on a reader thread, never on the event loop."""

from __future__ import annotations

from sqlite_utils import Database

from edge_server import passwords
from edge_server.errors import Unauthorized
from edge_server.ops.rows import Row
from edge_server.store import Store
from edge_server.store import users as users_store

# Checked when the user does not exist, so an unknown name costs what a wrong password does.
_DUMMY = passwords.hash_password("not a password")


class SignedIn(Row):
    username: str
    role: str


async def sign_in(store: Store, username: str, password: str) -> SignedIn:
    """The user, if the password is theirs; ``Unauthorized`` otherwise (the same answer
    for an unknown user and a wrong password)."""

    def check(db: Database) -> SignedIn | None:
        user = users_store.by_name(db, username)
        stored = user["password_hash"] if user is not None else _DUMMY
        if not passwords.check_password(password, stored) or user is None:
            return None
        return SignedIn(username=user["username"], role=user["role"])

    found = await store.read(check)
    if found is None:
        raise Unauthorized("wrong username or password", code="bad_credentials")
    return found
