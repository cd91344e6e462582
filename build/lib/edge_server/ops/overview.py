"""The fleet at a glance (the dashboard's overview): presence, conditions, version spread,
and the newest entries of the audit log."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from edge_server.ops.rows import Row
from edge_server.store import Store
from edge_server.store import overview as overview_store
from edge_server.store.rows import list_audit


class ConditionCount(Row):
    type: str
    status: str
    devices: int


class VersionCount(Row):
    type: str
    version: str
    devices: int


class AuditEntry(Row):
    at: float
    actor: str
    action: str
    target: str


class Overview(Row):
    total: int
    online: int
    behind: int
    conditions: list[ConditionCount]
    versions: list[VersionCount]
    recent: list[AuditEntry]


async def overview(store: Store, recent: int = 15) -> Overview:
    def read(db: Database) -> dict[str, Any]:
        return {
            **overview_store.presence(db),
            "conditions": overview_store.conditions(db),
            "versions": overview_store.versions(db),
            "recent": list_audit(db, recent),
        }

    return Overview.model_validate(await store.read(read))
