"""A device's one status word, as every dashboard view shows it: icon + word + colour.

Online, Stale, Offline, Updating, Error, RolledBack (and Revoked, once its certificates
are). Stale: connected, behind its desired generation, and no status for longer than
``STALE_AFTER``: a stuck device shows, it does not hide behind a green dot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from edge_server.ops.devices import DeviceSummary
from edge_server.web.render import iso, relative

STALE_AFTER = 300.0


@dataclass(frozen=True)
class Status:
    word: str
    icon: str
    css: str


ONLINE = Status("Online", "●", "ok")
STALE = Status("Stale", "◷", "warn")
OFFLINE = Status("Offline", "○", "off")
UPDATING = Status("Updating", "↻", "busy")
ERROR = Status("Error", "✕", "bad")
ROLLED_BACK = Status("RolledBack", "↶", "bad")
REVOKED = Status("Revoked", "⊘", "off")
ALL = (ONLINE, STALE, OFFLINE, UPDATING, ERROR, ROLLED_BACK, REVOKED)


def of(device: DeviceSummary, now: float | None = None) -> Status:
    now = now or time.time()
    states = {c.get("status") for c in device.conditions}
    if device.revoked:
        return REVOKED
    if "RolledBack" in states:
        return ROLLED_BACK
    if states & {"Error", "Refused"}:
        return ERROR
    if not device.online:
        return OFFLINE
    if device.generation > device.observed_generation:
        since = device.status_at or device.registered_at
        return STALE if now - since > STALE_AFTER else UPDATING
    if states & {"Progressing", "Pending"}:
        return UPDATING
    return ONLINE


def cells(device: DeviceSummary) -> dict[str, Any]:
    """What the devices table shows of one device: the page renders it, the live stream
    sends it (``sse.py``) and ``app.js`` patches the row's cells with it."""
    status = of(device)
    return {
        "id": device.id,
        "name": device.name,
        "status": status.word,
        "icon": status.icon,
        "css": status.css,
        "generation": f"{device.observed_generation} / {device.generation}",
        "in_sync": device.observed_generation >= device.generation,
        "in_sync_text": "yes"
        if device.observed_generation >= device.generation
        else "no: the device has not applied its newest spec yet",
        "last_seen": iso(device.last_seen),
        "last_seen_text": relative(device.last_seen),
        "group": device.group,
        "groups": ", ".join(device.groups) or "—",
        "labels": ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items())),
    }
