"""Groups: a label selector, a priority, and the spec patch they give their devices."""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from edge_server.store.rows import dumps, loads_columns


def create(db: Database, name: str, selector: str, priority: int) -> None:
    now = time.time()
    db.execute(
        "INSERT INTO groups (name, selector, priority, spec, created_at, updated_at)"
        " VALUES (?, ?, ?, '{}', ?, ?)",
        (name, selector, priority, now, now),
    )


def get(db: Database, name: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM groups WHERE name = ?", (name,)))
    return loads_columns(dict(rows[0]), "spec") if rows else None


def version(db: Database) -> tuple[int, bytes]:
    """The groups' version: a counter that every insert, update and delete of a group bumps
    (triggers, migration 0003), with a random tag drawn at each bump. The clock and the
    rows' contents play no part, and a number reused after a rollback gets another tag."""
    number, tag = db.execute("SELECT version, tag FROM groups_version").fetchone()
    return int(number), bytes(tag)


def list_all(db: Database) -> list[dict[str, Any]]:
    """Every group, lowest precedence first (priority, then name)."""
    rows = db.query("SELECT * FROM groups ORDER BY priority, name")
    return [loads_columns(dict(r), "spec") for r in rows]


def update(
    db: Database,
    name: str,
    *,
    selector: str | None = None,
    priority: int | None = None,
    spec: dict[str, Any] | None = None,
) -> bool:
    cur = db.execute(
        "UPDATE groups SET selector = coalesce(?, selector), priority = coalesce(?, priority),"
        " spec = coalesce(?, spec), updated_at = ? WHERE name = ?",
        (selector, priority, dumps(spec) if spec is not None else None, time.time(), name),
    )
    return cur.rowcount > 0


def delete(db: Database, name: str) -> bool:
    return db.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount > 0
