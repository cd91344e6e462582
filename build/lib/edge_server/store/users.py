"""Operators and their API tokens."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database


def count(db: Database) -> int:
    return int(db.execute("SELECT count(*) FROM users").fetchone()[0])


def create(db: Database, username: str, password_hash: str, role: str) -> int:
    cur = db.execute(
        "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
        (username, password_hash, role, time.time()),
    )
    return int(cur.lastrowid or 0)


def by_name(db: Database, username: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM users WHERE username = ?", (username,)))
    return rows[0] if rows else None


def create_api_token(
    db: Database, token_id: str, user_id: int, secret_hash: str, description: str
) -> None:
    db.execute(
        "INSERT INTO api_tokens (id, user_id, secret_hash, description, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (token_id, user_id, secret_hash, description, time.time()),
    )


def api_token_with_user(db: Database, token_id: str) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT t.id, t.secret_hash, t.revoked_at, u.username, u.role"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?",
            (token_id,),
        )
    )
    return rows[0] if rows else None


def list_api_tokens(db: Database) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT t.id, u.username, t.description, t.created_at, t.revoked_at"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at"
        )
    )


def revoke_api_token(db: Database, token_id: str) -> bool:
    cur = db.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (time.time(), token_id),
    )
    return cur.rowcount > 0
