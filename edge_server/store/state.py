"""Per-device desired and observed state: spec + generation, status, presence, status events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edge_server.store.rows import dumps, loads_columns

JSON_COLUMNS = ("override", "spec", "groups", "conditions")


def device_rows(db: Database, columns: str, device_ids: Iterable[str] | None) -> list[Any]:
    """``SELECT id, <columns> FROM devices`` for these devices, or every device (by id);
    ``columns`` is SQL written here in the store, never caller input."""
    if device_ids is None:
        return db.execute(f"SELECT id, {columns} FROM devices ORDER BY id").fetchall()  # noqa: S608
    ids = list(device_ids)
    rows: list[Any] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows += db.execute(
            f"SELECT id, {columns} FROM devices WHERE id IN ({marks})",  # noqa: S608
            chunk,
        ).fetchall()
    return rows


def labels_of(db: Database, device_ids: Iterable[str] | None) -> list[tuple[str, dict[str, str]]]:
    """(id, labels) of these devices, or of every device."""
    return [(r[0], json.loads(r[1])) for r in device_rows(db, "labels", device_ids)]


def names_of(db: Database, device_ids: Iterable[str] | None) -> dict[str, str]:
    """id → name of these devices, or of every device."""
    return {r[0]: r[1] for r in device_rows(db, "name", device_ids)}


def get(db: Database, device_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM device_state WHERE device_id = ?", (device_id,)))
    return loads_columns(dict(rows[0]), *JSON_COLUMNS) if rows else None


@dataclass(frozen=True)
class SpecState:
    spec_hash: str
    generation: int
    override: dict[str, Any]
    groups: list[str]
    acked_seq: int


def spec_states(db: Database, device_ids: list[str] | None = None) -> dict[str, SpecState]:
    """device id → what spec recomputation needs, for these devices (or all with state)."""
    sql = "SELECT device_id, spec_hash, generation, override, groups, acked_seq FROM device_state"
    rows: list[Any] = []
    if device_ids is None:
        rows = db.execute(sql).fetchall()
    else:
        for start in range(0, len(device_ids), 500):
            chunk = device_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += db.execute(f"{sql} WHERE device_id IN ({marks})", chunk).fetchall()  # noqa: S608
    return {r[0]: SpecState(r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5]) for r in rows}


def save_spec(
    db: Database,
    device_id: str,
    spec: dict[str, Any],
    spec_hash: str,
    generation: int,
    groups: list[str],
) -> None:
    db.execute(
        """
        INSERT INTO device_state (device_id, spec, spec_hash, generation, groups)
        VALUES (?, ?, ?, ?, ?)
        ON CONFLICT(device_id) DO UPDATE SET spec = excluded.spec,
            spec_hash = excluded.spec_hash, generation = excluded.generation,
            groups = excluded.groups
        """,
        (device_id, dumps(spec), spec_hash, generation, dumps(groups)),
    )


def save_groups(db: Database, device_id: str, groups: list[str]) -> None:
    db.execute("UPDATE device_state SET groups = ? WHERE device_id = ?", (dumps(groups), device_id))


def set_override(db: Database, device_id: str, override: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO device_state (device_id, override) VALUES (?, ?)"
        " ON CONFLICT(device_id) DO UPDATE SET override = excluded.override",
        (device_id, dumps(override)),
    )


def pending_nudges(db: Database) -> list[tuple[str, int, int]]:
    """(device, generation, acked seq) of devices that have not yet observed their spec."""
    rows = db.execute(
        "SELECT device_id, generation, acked_seq FROM device_state"
        " WHERE generation > observed_generation"
    )
    return [(r[0], r[1], r[2]) for r in rows]


def apply_status(
    db: Database, device_id: str, events: list[dict[str, Any]], via: str
) -> tuple[int, int, int]:
    """Apply each (device, seq) once, in order. Returns (acked seq, applied, generation).

    Events at or below the acknowledged seq are duplicates: acknowledged, not applied. An
    event past a gap waits until the missing one arrives (the agent resends in order).
    """
    row = db.execute(
        "SELECT acked_seq, generation FROM device_state WHERE device_id = ?", (device_id,)
    ).fetchone()
    if row is None:
        return 0, 0, 0
    acked, generation = int(row[0]), int(row[1])
    now = time.time()
    applied = 0
    latest: dict[str, Any] | None = None
    for event in sorted(events, key=lambda e: int(e["seq"])):
        seq = int(event["seq"])
        if seq <= acked:
            continue
        if seq != acked + 1:
            break
        db.execute(
            "INSERT INTO status_events (device_id, seq, observed_generation, conditions, at,"
            " applied_at, via) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                device_id,
                seq,
                event["observed_generation"],
                dumps(event["conditions"]),
                event["at"],
                now,
                via,
            ),
        )
        acked, applied, latest = seq, applied + 1, event
    if latest is not None:
        db.execute(
            "UPDATE device_state SET observed_generation = ?, conditions = ?, acked_seq = ?,"
            " status_at = ?, last_seen = ? WHERE device_id = ?",
            (
                latest["observed_generation"],
                dumps(latest["conditions"]),
                acked,
                now,
                now,
                device_id,
            ),
        )
    return acked, applied, generation


def set_presence(db: Database, device_id: str, online: bool) -> bool:
    cur = db.execute(
        "UPDATE device_state SET online = ?, last_seen = ? WHERE device_id = ?",
        (1 if online else 0, time.time(), device_id),
    )
    return cur.rowcount > 0


def mark_all_offline(db: Database) -> None:
    db.execute("UPDATE device_state SET online = 0 WHERE online = 1")


def forget_status(db: Database, device_id: str) -> None:
    """A reset device starts a new agent with a new outbox: its seq numbers start again."""
    db.execute("DELETE FROM status_events WHERE device_id = ?", (device_id,))
    db.execute(
        "UPDATE device_state SET acked_seq = 0, observed_generation = 0, conditions = '[]'"
        " WHERE device_id = ?",
        (device_id,),
    )


def delete(db: Database, device_id: str) -> None:
    db.execute("DELETE FROM status_events WHERE device_id = ?", (device_id,))
    db.execute("DELETE FROM device_state WHERE device_id = ?", (device_id,))


def event_counts(db: Database, device_id: str) -> dict[str, int]:
    row = db.execute(
        "SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM status_events"
        " WHERE device_id = ?",
        (device_id,),
    ).fetchone()
    return {"events": row[0], "distinct": row[1], "max_seq": row[2]}


def recent_events(db: Database, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The device's newest status events, newest first."""
    rows = db.query(
        "SELECT seq, observed_generation, conditions, at, applied_at, via FROM status_events"
        " WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
        (device_id, limit),
    )
    return [loads_columns(dict(r), "conditions") for r in rows]
