"""Row helpers shared by the store modules: JSON columns and the audit log."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlite_utils import Database


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads_columns(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    for column in columns:
        if isinstance(row.get(column), str):
            row[column] = json.loads(row[column])
    return row


def audit(db: Database, actor: str, action: str, target: str, **detail: Any) -> None:
    db.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (time.time(), actor, action, target, dumps(detail)),
    )


def list_audit(db: Database, limit: int = 100) -> list[dict[str, Any]]:
    rows = db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
    return [loads_columns(dict(r), "detail") for r in rows]


def audit_of(db: Database, target: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest audit entries about one target (a device id, a group name...)."""
    rows = db.query(
        "SELECT * FROM audit WHERE target = ? ORDER BY id DESC LIMIT ?", (target, limit)
    )
    return [loads_columns(dict(r), "detail") for r in rows]
