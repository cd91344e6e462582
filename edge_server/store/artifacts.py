"""The artifact mirror's rows. The files themselves live in ``<data>/artifacts/<sha256>``
(``edge_server.mirror``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from edge_server.store import state as state_store

COLUMNS = "id, kind, name, version, arch, sha256, size, signature, created_at, created_by"


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["arch"] = out["arch"] or None
    return out


def create(
    db: Database,
    *,
    artifact_id: str,
    kind: str,
    name: str,
    version: str,
    arch: str | None,
    sha256: str,
    size: int,
    signature: str,
    created_by: str,
    seed_slot_offset: int | None = None,
) -> None:
    db.execute(
        f"INSERT INTO artifacts ({COLUMNS}, seed_slot_offset) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            artifact_id,
            kind,
            name,
            version,
            arch or "",
            sha256,
            size,
            signature,
            time.time(),
            created_by,
            seed_slot_offset,
        ),
    )


def get(db: Database, artifact_id: str) -> dict[str, Any] | None:
    rows = list(
        db.query(f"SELECT {COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,))  # noqa: S608
    )
    return _row(rows[0]) if rows else None


def find(
    db: Database, kind: str, name: str, version: str, arch: str | None
) -> dict[str, Any] | None:
    """The artifact with this identity (kind, name, version, arch), if imported."""
    rows = list(
        db.query(
            f"SELECT {COLUMNS} FROM artifacts "  # noqa: S608
            "WHERE kind = ? AND name = ? AND version = ? AND arch = ?",
            (kind, name, version, arch or ""),
        )
    )
    return _row(rows[0]) if rows else None


def list_all(db: Database, kind: str | None = None) -> list[dict[str, Any]]:
    """Every artifact (or those of ``kind``), oldest import first."""
    sql = f"SELECT {COLUMNS} FROM artifacts"  # noqa: S608
    args: tuple[str, ...] = ()
    if kind is not None:
        sql += " WHERE kind = ?"
        args = (kind,)
    return [_row(r) for r in db.query(sql + " ORDER BY created_at, rowid", args)]


def for_versions(db: Database, kinds: Iterable[str]) -> list[dict[str, Any]]:
    """The artifacts of these kinds, oldest first (so a later row, a newer import, wins)."""
    marks = ",".join("?" * len(kinds := list(kinds)))
    return [
        _row(r)
        for r in db.query(
            f"SELECT {COLUMNS} FROM artifacts WHERE kind IN ({marks}) "  # noqa: S608
            "ORDER BY created_at, rowid",
            kinds,
        )
    ]


def newest_with_seed_slot(db: Database, kind: str) -> dict[str, Any] | None:
    """The newest import of ``kind`` with its ``seed_slot_offset`` (base ISOs)."""
    rows = list(
        db.query(
            f"SELECT {COLUMNS}, seed_slot_offset FROM artifacts "  # noqa: S608
            "WHERE kind = ? AND seed_slot_offset IS NOT NULL "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (kind,),
        )
    )
    return _row(rows[0]) if rows else None


def delete(db: Database, artifact_id: str) -> bool:
    return db.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,)).rowcount > 0


def sha256_in_use(db: Database, sha256: str) -> bool:
    return (
        db.execute("SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
        is not None
    )


def device_arches(db: Database, device_ids: Iterable[str] | None) -> dict[str, str]:
    """device id → ``facts.arch`` as the device reported it (``x86_64``, ``aarch64``, …)."""
    rows = state_store.device_rows(db, "json_extract(facts, '$.arch')", device_ids)
    return {r[0]: str(r[1] or "") for r in rows}
