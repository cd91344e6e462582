"""Registration tokens. The secret is checked against its hash; it is kept otherwise only
sealed (``edge_server.sealing``), for seed downloads."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from edge_server.store.rows import dumps, loads_columns

PUBLIC_COLUMNS = (
    "id, group_name, labels, name_template, description, max_uses, uses, expires_at,"
    " revoked_at, created_at, created_by"
)


def create(
    db: Database,
    *,
    token_id: str,
    secret_hash: str,
    secret_sealed: str | None = None,
    group: str,
    labels: dict[str, str],
    name_template: str,
    description: str,
    max_uses: int | None,
    expires_at: float | None,
    created_by: str,
) -> None:
    db.execute(
        "INSERT INTO reg_tokens (id, secret_hash, secret_sealed, group_name, labels, name_template,"
        " description, max_uses, expires_at, created_at, created_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            token_id,
            secret_hash,
            secret_sealed,
            group,
            dumps(labels),
            name_template,
            description,
            max_uses,
            expires_at,
            time.time(),
            created_by,
        ),
    )


def get_with_secret(db: Database, token_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM reg_tokens WHERE id = ?", (token_id,)))
    return loads_columns(dict(rows[0]), "labels") if rows else None


def get(db: Database, token_id: str) -> dict[str, Any] | None:
    rows = list(db.query(f"SELECT {PUBLIC_COLUMNS} FROM reg_tokens WHERE id = ?", (token_id,)))  # noqa: S608
    return loads_columns(dict(rows[0]), "labels") if rows else None


def list_all(db: Database) -> list[dict[str, Any]]:
    rows = db.query(f"SELECT {PUBLIC_COLUMNS} FROM reg_tokens ORDER BY created_at")  # noqa: S608
    return [loads_columns(dict(r), "labels") for r in rows]


def count_use(db: Database, token_id: str) -> None:
    db.execute("UPDATE reg_tokens SET uses = uses + 1 WHERE id = ?", (token_id,))


def revoke(db: Database, token_id: str) -> bool:
    cur = db.execute(
        "UPDATE reg_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (time.time(), token_id),
    )
    return cur.rowcount > 0
