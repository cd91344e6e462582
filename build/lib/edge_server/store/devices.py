"""Devices, their certificates, and the serial deny-list."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edge_server.selectors import Selector
from edge_server.store.rows import dumps, loads_columns

JSON_COLUMNS = ("labels", "labels_local", "labels_token", "labels_operator", "facts")
LIST_COLUMNS = (
    "d.id, d.name, d.group_name, d.labels, d.agent_version, d.registered_at, d.updated_at,"
    " d.facts, coalesce(s.online, 0) AS online, coalesce(s.generation, 0) AS generation,"
    " coalesce(s.observed_generation, 0) AS observed_generation,"
    " coalesce(s.conditions, '[]') AS conditions, s.last_seen, s.groups, s.status_at,"
    " NOT EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id"
    " AND c.revoked_at IS NULL) AS revoked"
)
FROM_JOINED = "devices d LEFT JOIN device_state s ON s.device_id = d.id"


@dataclass(frozen=True)
class DeviceWrite:
    id: str
    name: str
    machine_id: str
    dmi_uuid: str | None
    public_key_sha256: str
    group_name: str
    labels_local: dict[str, str]
    labels_token: dict[str, str]
    facts: dict[str, Any]
    agent_version: str
    protocol_version: int
    token_id: str


def effective_labels(
    local: dict[str, str], token: dict[str, str], operator: dict[str, str | None]
) -> dict[str, str]:
    """Operator labels win over token labels, which win over the device's own.

    An operator value of ``None`` is a tombstone: the operator removed that label.
    """
    merged: dict[str, str | None] = {**local, **token, **operator}
    return {k: v for k, v in sorted(merged.items()) if v is not None}


def by_machine_id(db: Database, machine_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM devices WHERE machine_id = ?", (machine_id,)))
    return loads_columns(dict(rows[0]), *JSON_COLUMNS) if rows else None


def get(db: Database, device_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM devices WHERE id = ?", (device_id,)))
    return loads_columns(dict(rows[0]), *JSON_COLUMNS) if rows else None


def upsert(db: Database, d: DeviceWrite, operator: dict[str, str | None]) -> None:
    now = time.time()
    labels = effective_labels(d.labels_local, d.labels_token, operator)
    db.execute(
        """
        INSERT INTO devices (id, name, machine_id, dmi_uuid, public_key_sha256, group_name,
            labels, labels_local, labels_token, labels_operator, facts, agent_version,
            protocol_version, token_id, registered_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?, ?)
        ON CONFLICT(id) DO UPDATE SET
            name = excluded.name, dmi_uuid = excluded.dmi_uuid,
            public_key_sha256 = excluded.public_key_sha256, group_name = excluded.group_name,
            labels = excluded.labels, labels_local = excluded.labels_local,
            labels_token = excluded.labels_token, facts = excluded.facts,
            agent_version = excluded.agent_version,
            protocol_version = excluded.protocol_version, token_id = excluded.token_id,
            updated_at = excluded.updated_at, reset_at = NULL
        """,
        (
            d.id,
            d.name,
            d.machine_id,
            d.dmi_uuid,
            d.public_key_sha256,
            d.group_name,
            dumps(labels),
            dumps(d.labels_local),
            dumps(d.labels_token),
            dumps(d.facts),
            d.agent_version,
            d.protocol_version,
            d.token_id,
            now,
            now,
        ),
    )


def set_operator_labels(
    db: Database, device_id: str, changes: dict[str, str | None]
) -> dict[str, Any] | None:
    row = get(db, device_id)
    if row is None:
        return None
    operator = {**row["labels_operator"], **changes}
    labels = effective_labels(row["labels_local"], row["labels_token"], operator)
    db.execute(
        "UPDATE devices SET labels_operator = ?, labels = ?, updated_at = ? WHERE id = ?",
        (dumps(operator), dumps(labels), time.time(), device_id),
    )
    return get(db, device_id)


def _where(selector: Selector, after: str | None, search: str = "") -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if search:
        like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append("(d.id LIKE ? ESCAPE '\\' OR d.name LIKE ? ESCAPE '\\')")
        params.extend([like, like])
    for req in selector.requirements:
        path = f'$."{req.key}"'
        if req.op == "exists":
            clauses.append("json_type(d.labels, ?) IS NOT NULL")
            params.append(path)
        elif req.op == "!exists":
            clauses.append("json_type(d.labels, ?) IS NULL")
            params.append(path)
        elif req.op == "=":
            clauses.append("json_extract(d.labels, ?) = ?")
            params.extend([path, req.value])
        else:
            clauses.append("(json_extract(d.labels, ?) IS NULL OR json_extract(d.labels, ?) != ?)")
            params.extend([path, path, req.value])
    if after:
        clauses.append("d.id > ?")
        params.append(after)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_page(
    db: Database, selector: Selector, limit: int, after: str | None, search: str = ""
) -> list[dict[str, Any]]:
    where, params = _where(selector, after, search)
    rows = db.query(
        f"SELECT {LIST_COLUMNS} FROM {FROM_JOINED}{where} ORDER BY d.id LIMIT ?",  # noqa: S608
        [*params, limit],
    )
    return [_listed(dict(r)) for r in rows]


def listed_one(db: Database, device_id: str) -> dict[str, Any] | None:
    """One device as a list shows it (the dashboard's live updates)."""
    rows = list(
        db.query(
            f"SELECT {LIST_COLUMNS} FROM {FROM_JOINED} WHERE d.id = ?",  # noqa: S608
            (device_id,),
        )
    )
    return _listed(dict(rows[0])) if rows else None


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    row = loads_columns(row, "labels", "facts", "conditions", "groups")
    row["online"] = bool(row["online"])
    row["revoked"] = bool(row["revoked"])
    row["groups"] = row["groups"] or []
    return row


def count(db: Database, selector: Selector, search: str = "") -> int:
    where, params = _where(selector, None, search)
    sql = f"SELECT count(*) FROM {FROM_JOINED}{where}"  # noqa: S608
    return int(db.execute(sql, params).fetchone()[0])


def add_certificate(
    db: Database, serial: int, device_id: str, issued_at: float, not_after: float
) -> None:
    db.execute(
        "INSERT INTO certificates (serial, device_id, issued_at, not_after) VALUES (?, ?, ?, ?)",
        (serial, device_id, issued_at, not_after),
    )


def certificate(db: Database, serial: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM certificates WHERE serial = ?", (serial,)))
    return rows[0] if rows else None


def certificates_of(db: Database, device_id: str) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT serial, issued_at, not_after, revoked_at FROM certificates"
            " WHERE device_id = ? ORDER BY issued_at",
            (device_id,),
        )
    )


def set_public_key(db: Database, device_id: str, public_key_sha256: str) -> None:
    """A renewal with a new key: the same machine registering again is known by it."""
    db.execute(
        "UPDATE devices SET public_key_sha256 = ?, updated_at = ? WHERE id = ?",
        (public_key_sha256, time.time(), device_id),
    )


def revoke_certificates(db: Database, device_id: str) -> int:
    cur = db.execute(
        "UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        (time.time(), device_id),
    )
    return cur.rowcount


def delete(db: Database, device_id: str) -> bool:
    revoke_certificates(db, device_id)
    db.execute("DELETE FROM status_events WHERE device_id = ?", (device_id,))
    db.execute("DELETE FROM device_state WHERE device_id = ?", (device_id,))
    cur = db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
    return cur.rowcount > 0


def reset(db: Database, device_id: str) -> bool:
    """Forget the device's key: its certificates are revoked and the next registration of the
    same machine, with any key, takes the record over."""
    revoke_certificates(db, device_id)
    cur = db.execute(
        "UPDATE devices SET public_key_sha256 = NULL, reset_at = ? WHERE id = ?",
        (time.time(), device_id),
    )
    return cur.rowcount > 0


def revoked_serials(db: Database) -> list[int]:
    """The deny-list, for CRLs handed to external brokers."""
    rows = db.execute(
        "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?",
        (time.time(),),
    )
    return [int(r[0]) for r in rows]
