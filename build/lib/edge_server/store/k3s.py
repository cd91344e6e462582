"""K3s clusters: members, the chosen server node of each, and what server nodes reported.

See ``edge_server.k3s_cluster`` for the rules; this module only holds their SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

CHUNK = 500


@dataclass(frozen=True)
class Member:
    group: str
    wants_server: bool


@dataclass(frozen=True)
class ServerReport:
    server_url: str
    token: str
    version: str


def members_of(db: Database, device_ids: Iterable[str] | None) -> dict[str, Member]:
    """device id → its cluster, for these devices (or every member)."""
    sql = "SELECT device_id, group_name, wants_server FROM k3s_members"
    rows = _select(db, sql, device_ids)
    return {r[0]: Member(r[1], bool(r[2])) for r in rows}


def _select(db: Database, sql: str, device_ids: Iterable[str] | None) -> list[Any]:
    """``sql`` for these devices (a ``WHERE device_id IN`` per chunk), or for all."""
    if device_ids is None:
        return list(db.execute(sql).fetchall())
    ids = sorted(set(device_ids))
    rows: list[Any] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        rows += db.execute(f"{sql} WHERE device_id IN ({marks})", chunk).fetchall()  # noqa: S608
    return rows


def set_member(db: Database, device_id: str, member: Member | None) -> None:
    if member is None:
        db.execute("DELETE FROM k3s_members WHERE device_id = ?", (device_id,))
        return
    db.execute(
        "INSERT INTO k3s_members (device_id, group_name, wants_server) VALUES (?, ?, ?)"
        " ON CONFLICT(device_id) DO UPDATE SET group_name = excluded.group_name,"
        " wants_server = excluded.wants_server",
        (device_id, member.group, int(member.wants_server)),
    )


def forget_missing_devices(db: Database) -> list[str]:
    """Drop the memberships of devices that no longer exist; their groups."""
    rows = db.execute(
        "SELECT device_id, group_name FROM k3s_members"
        " WHERE device_id NOT IN (SELECT id FROM devices)"
    ).fetchall()
    for device_id, _ in rows:
        db.execute("DELETE FROM k3s_members WHERE device_id = ?", (device_id,))
    return sorted({r[1] for r in rows})


def group_members(db: Database, group: str) -> list[str]:
    rows = db.execute(
        "SELECT device_id FROM k3s_members WHERE group_name = ? ORDER BY device_id", (group,)
    )
    return [r[0] for r in rows]


def pick_server(db: Database, group: str) -> str | None:
    """The group's server node by the rules: the lowest id carrying the server label, else
    the server chosen before if it is still a member, else the lowest id."""
    labelled = db.execute(
        "SELECT min(device_id) FROM k3s_members WHERE group_name = ? AND wants_server = 1",
        (group,),
    ).fetchone()[0]
    if labelled is not None:
        return str(labelled)
    kept = db.execute(
        "SELECT c.server_id FROM k3s_clusters c JOIN k3s_members m"
        " ON m.device_id = c.server_id AND m.group_name = c.group_name WHERE c.group_name = ?",
        (group,),
    ).fetchone()
    if kept is not None:
        return str(kept[0])
    lowest = db.execute(
        "SELECT min(device_id) FROM k3s_members WHERE group_name = ?", (group,)
    ).fetchone()[0]
    return str(lowest) if lowest is not None else None


def servers(db: Database) -> dict[str, str]:
    """group → its chosen server node."""
    return {r[0]: r[1] for r in db.execute("SELECT group_name, server_id FROM k3s_clusters")}


def set_server(db: Database, group: str, server_id: str | None) -> None:
    if server_id is None:
        db.execute("DELETE FROM k3s_clusters WHERE group_name = ?", (group,))
        return
    db.execute(
        "INSERT INTO k3s_clusters (group_name, server_id, chosen_at) VALUES (?, ?, ?)"
        " ON CONFLICT(group_name) DO UPDATE SET server_id = excluded.server_id,"
        " chosen_at = excluded.chosen_at",
        (group, server_id, time.time()),
    )


def reports(db: Database, device_ids: Iterable[str]) -> dict[str, ServerReport]:
    sql = "SELECT device_id, server_url, token, version FROM k3s_servers"
    return {r[0]: ServerReport(r[1], r[2], r[3]) for r in _select(db, sql, device_ids)}


def save_report(db: Database, device_id: str, report: ServerReport) -> bool:
    """Record a server node's report; False if it said nothing new."""
    old = reports(db, [device_id]).get(device_id)
    if old == report:
        return False
    db.execute(
        "INSERT INTO k3s_servers (device_id, server_url, token, version, reported_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET"
        " server_url = excluded.server_url, token = excluded.token,"
        " version = excluded.version, reported_at = excluded.reported_at",
        (device_id, report.server_url, report.token, report.version, time.time()),
    )
    return True


def forget_report(db: Database, device_id: str) -> None:
    db.execute("DELETE FROM k3s_servers WHERE device_id = ?", (device_id,))
