"""Fleet-wide counts for the dashboard's overview, each one aggregate query."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database


def presence(db: Database) -> dict[str, int]:
    row = db.execute(
        "SELECT count(*), coalesce(sum(coalesce(s.online, 0)), 0),"
        " coalesce(sum(coalesce(s.generation, 0) > coalesce(s.observed_generation, 0)), 0)"
        " FROM devices d LEFT JOIN device_state s ON s.device_id = d.id"
    ).fetchone()
    return {"total": int(row[0]), "online": int(row[1]), "behind": int(row[2])}


def conditions(db: Database) -> list[dict[str, Any]]:
    """(condition type, status) → number of devices reporting it."""
    rows = db.execute(
        "SELECT json_extract(c.value, '$.type') AS type, json_extract(c.value, '$.status')"
        " AS status, count(*) AS devices FROM device_state s, json_each(s.conditions) c"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    return [{"type": r[0], "status": r[1], "devices": r[2]} for r in rows]


def versions(db: Database) -> list[dict[str, Any]]:
    """(condition type, reported version) → number of devices: the OS and K3s spread."""
    rows = db.execute(
        "SELECT json_extract(c.value, '$.type'), json_extract(c.value, '$.version'), count(*)"
        " FROM device_state s, json_each(s.conditions) c"
        " WHERE json_extract(c.value, '$.version') IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 3 DESC"
    ).fetchall()
    return [{"type": r[0], "version": r[1], "devices": r[2]} for r in rows]
