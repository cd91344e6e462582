"""Devices: operators label, override, delete and reset them; everyone reads them.

Delete and reset revoke the device's certificates: their ``Changes`` name the device in
``revoked``, so the notifier rewrites the CRL and ends its live MQTT session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from sqlite_utils import Database

from edge_server import k3s_cluster, selectors, specs
from edge_server.errors import NotFound
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.ops.rows import (
    ConditionJson,
    FactsJson,
    LabelChanges,
    Labels,
    Row,
    SpecJson,
    SpecPatchJson,
)
from edge_server.store import Store, connect
from edge_server.store import devices as devices_store
from edge_server.store import state as state_store
from edge_server.store.rows import audit, audit_of
from registration.desired import Spec, SpecDocument, SpecPatch
from registration.protocol import LabelPatch

HIDDEN = ("machine_id", "labels_local", "labels_token", "labels_operator")


class DeviceSummary(Row):
    """A device in a list: its record and the state a fleet view shows."""

    id: str
    name: str
    group: str
    labels: Labels
    agent_version: str
    registered_at: float
    updated_at: float
    facts: FactsJson
    online: bool
    generation: int
    observed_generation: int
    conditions: list[ConditionJson]
    last_seen: float | None
    groups: list[str]
    status_at: float | None = Field(description="when its last status event was applied")
    revoked: bool = Field(description="no certificate of it is valid any more")


class DevicePage(Row):
    items: list[DeviceSummary]
    total: int = Field(description="devices matching the selector, on every page")
    next: str | None = Field(description="pass as ?after= for the next page; null on the last")


class DeviceRow(Row):
    """A device's inventory record, without the machine id and the labels' sources."""

    id: str
    name: str
    dmi_uuid: str | None
    public_key_sha256: str | None
    group: str
    labels: Labels
    facts: FactsJson
    agent_version: str
    protocol_version: int
    token_id: str | None
    registered_at: float
    updated_at: float
    reset_at: float | None


class Certificate(Row):
    serial: str = Field(description="decimal; too large for a JSON number")
    issued_at: float
    not_after: float
    revoked_at: float | None


class Desired(Row):
    generation: int
    spec: SpecJson | None


class EventCounts(Row):
    events: int
    distinct: int
    max_seq: int


class Reported(Row):
    observed_generation: int
    conditions: list[ConditionJson]
    acked_seq: int
    status_at: float | None
    status_events: EventCounts


class LabelSources(Row):
    local: Labels
    token: Labels
    operator: LabelChanges


class DeviceDetail(DeviceRow):
    """One device: inventory, certificates, desired against reported state, presence."""

    certificates: list[Certificate]
    desired: Desired
    reported: Reported
    groups: list[str]
    override: SpecPatchJson
    online: bool
    last_seen: float | None
    in_sync: bool
    label_sources: LabelSources


class Whoami(Row):
    """What a device's certificate says it is."""

    device_id: str
    serial: str
    name: str
    labels: Labels


class OverrideSet(Row):
    device_id: str
    generation: int
    override: SpecPatchJson


Action = Literal["delete", "reset"]


class DeviceAction(Row):
    id: str
    status: Action


def _record(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in HIDDEN}
    out["group"] = out.pop("group_name")
    return out


# --- reads -----------------------------------------------------------------------------


async def list_page(
    store: Store, selector: selectors.Selector, limit: int, after: str | None, search: str = ""
) -> DevicePage:
    """A page of devices by id; ``search`` matches a part of the id or the name."""

    def read(db: Database) -> tuple[list[dict[str, Any]], int]:
        return devices_store.list_page(db, selector, limit + 1, after, search), devices_store.count(
            db, selector, search
        )

    rows, total = await store.read(read)
    more = len(rows) > limit
    rows = rows[:limit]
    return DevicePage(
        items=[DeviceSummary.model_validate(_record(r)) for r in rows],
        total=total,
        next=rows[-1]["id"] if more and rows else None,
    )


async def summary(store: Store, device_id: str) -> DeviceSummary | None:
    """One device as a list shows it; None when there is no such device (any more)."""
    row = await store.read(lambda db: devices_store.listed_one(db, device_id))
    return DeviceSummary.model_validate(_record(row)) if row is not None else None


class TimelineEntry(Row):
    at: float
    what: str = Field(description="an audit action (device.label) or status")
    actor: str
    detail: str


def _said(detail: dict[str, Any]) -> str:
    """An audit entry's detail in words: ``labels: site=eu, role removed``."""
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict):
            inner = ", ".join(
                f"{k}={v}" if v is not None else f"{k} removed" for k, v in value.items()
            )
            parts.append(f"{key}: {inner}")
        else:
            parts.append(f"{key}={value}")
    return "; ".join(parts)


async def timeline(store: Store, device_id: str, limit: int = 30) -> list[TimelineEntry]:
    """What operators did to the device and what it reported, newest first."""

    def read(db: Database) -> list[TimelineEntry]:
        entries = [
            TimelineEntry(
                at=a["at"],
                what=a["action"],
                actor=a["actor"],
                detail=_said(a["detail"]),
            )
            for a in audit_of(db, device_id, limit)
        ]
        for e in state_store.recent_events(db, device_id, limit):
            summary = ", ".join(f"{c['type']} {c['status']}" for c in e["conditions"])
            entries.append(
                TimelineEntry(
                    at=e["applied_at"],
                    what=f"status #{e['seq']}",
                    actor=f"device (via {e['via']})",
                    detail=f"observed generation {e['observed_generation']}: {summary}",
                )
            )
        entries.sort(key=lambda t: t.at, reverse=True)
        return entries[:limit]

    return await store.read(read)


async def show(store: Store, device_id: str) -> DeviceDetail:
    def read(db: Database) -> DeviceDetail | None:
        row = devices_store.get(db, device_id)
        if row is None:
            return None
        certificates = [
            Certificate.model_validate({**c, "serial": str(c["serial"])})
            for c in devices_store.certificates_of(db, device_id)
        ]
        state = state_store.get(db, device_id) or {}
        return DeviceDetail.model_validate(
            {
                **_record(row),
                "certificates": certificates,
                "desired": Desired(
                    generation=state.get("generation", 0),
                    spec=k3s_cluster.redacted(state["spec"]) if state.get("spec") else None,
                ),
                "reported": Reported(
                    observed_generation=state.get("observed_generation", 0),
                    conditions=state.get("conditions", []),
                    acked_seq=state.get("acked_seq", 0),
                    status_at=state.get("status_at"),
                    status_events=EventCounts.model_validate(
                        state_store.event_counts(db, device_id)
                    ),
                ),
                "groups": state.get("groups", []),
                "override": state.get("override", {}),
                "online": bool(state.get("online", 0)),
                "last_seen": state.get("last_seen"),
                "in_sync": state.get("generation", 0) == state.get("observed_generation"),
                "label_sources": LabelSources(
                    local=row["labels_local"],
                    token=row["labels_token"],
                    operator=row["labels_operator"],
                ),
            }
        )

    detail = await store.read(read)
    if detail is None:
        raise NotFound(f"no device {device_id}")
    return detail


async def identity(store: Store, device_id: str, serial: int) -> Whoami:
    row = await store.read(lambda db: devices_store.get(db, device_id))
    if row is None:
        raise NotFound(f"no device {device_id}")
    return Whoami(device_id=device_id, serial=str(serial), name=row["name"], labels=row["labels"])


async def spec_document(store: Store, device_id: str, operator: bool = False) -> SpecDocument:
    """The device's spec; as an ``operator`` reads it, without the K3s join token."""
    state = await store.read(lambda db: state_store.get(db, device_id))
    if state is None:
        raise NotFound(f"no device {device_id}")
    spec = k3s_cluster.redacted(state["spec"]) if operator else state["spec"]
    return SpecDocument(
        device_id=device_id,
        generation=state["generation"],
        spec=Spec.model_validate(spec),
        acked_seq=state["acked_seq"],
    )


async def revoked_serials(store: Store) -> list[int]:
    """The deny-list, for the CRL an external broker reads."""
    return await store.read(devices_store.revoked_serials)


def revoked_serials_at(db_path: Path) -> list[int]:
    """The same, for a command that runs without a server (``corral broker …``)."""
    db = connect(db_path)
    try:
        return devices_store.revoked_serials(db)
    finally:
        db.conn.close()


# --- operations ------------------------------------------------------------------------


async def label(store: Store, actor: Actor, device_id: str, patch: LabelPatch) -> Done[DeviceRow]:
    """Set or remove operator labels; the device's spec follows its new labels."""

    def write(db: Database) -> tuple[DeviceRow, list[specs.Change]]:
        row = devices_store.set_operator_labels(db, device_id, patch.labels)
        if row is None:
            raise NotFound(f"no device {device_id}")
        audit(db, actor.name, "device.label", device_id, labels=patch.labels)
        return DeviceRow.model_validate(_record(row)), specs.recompute(db, [device_id])

    row, nudges = await store.write(write)
    return Done(row, Changes.of(Event("device.label", device_id, actor.name), nudges=nudges))


async def override(
    store: Store, actor: Actor, device_id: str, patch: SpecPatch
) -> Done[OverrideSet]:
    """Replace the device's own layer on top of its groups."""
    value = patch.model_dump(exclude_none=True)

    def write(db: Database) -> tuple[OverrideSet, list[specs.Change]]:
        if devices_store.get(db, device_id) is None:
            raise NotFound(f"no device {device_id}")
        state_store.set_override(db, device_id, value)
        audit(db, actor.name, "device.override", device_id)
        nudges = specs.recompute(db, [device_id])
        state = state_store.get(db, device_id)
        generation = int(state["generation"]) if state is not None else 0
        return OverrideSet(device_id=device_id, generation=generation, override=value), nudges

    result, nudges = await store.write(write)
    return Done(result, Changes.of(Event("device.override", device_id, actor.name), nudges=nudges))


Revoke = Callable[[Store, Actor, str], Awaitable[Done[DeviceAction]]]  # delete, reset


async def delete(store: Store, actor: Actor, device_id: str) -> Done[DeviceAction]:
    """Forget the device and revoke its certificates."""
    return await _revoke(store, actor, device_id, "delete", devices_store.delete)


async def reset(store: Store, actor: Actor, device_id: str) -> Done[DeviceAction]:
    """Revoke the device's certificates and forget its key: the same machine may register
    again with a new one and keeps its record."""
    return await _revoke(store, actor, device_id, "reset", devices_store.reset)


async def _revoke(
    store: Store,
    actor: Actor,
    device_id: str,
    action: Action,
    verb: Callable[[Database, str], bool],
) -> Done[DeviceAction]:
    def write(db: Database) -> list[specs.Change]:
        if not verb(db, device_id):
            raise NotFound(f"no device {device_id}")
        audit(db, actor.name, f"device.{action}", device_id)
        if action != "delete":
            return []
        # A deleted K3s server node: its cluster gets another one.
        return specs.recompute(db, k3s_cluster.forget(db, device_id))

    nudges = await store.write(write)
    return Done(
        DeviceAction(id=device_id, status=action),
        Changes.of(
            Event(f"device.{action}", device_id, actor.name), nudges=nudges, revoked=[device_id]
        ),
    )
