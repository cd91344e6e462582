"""Device inventory for operators, and ``whoami`` for devices (mTLS)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web
from sqlite_utils import Database

from edge_server import revocation, selectors, specs
from edge_server.api.http import SPEC_BODY_BYTES, json_response, query_int, read_model
from edge_server.auth import (
    authenticate_device,
    authenticate_operator,
    current_device,
    current_operator,
    device,
    operator,
    peer_certificate,
)
from edge_server.errors import NotFound
from edge_server.keys import CHANNEL, SESSIONS, STORE
from edge_server.store import devices as devices_store
from edge_server.store import state as state_store
from edge_server.store.rows import audit
from registration.desired import Spec, SpecDocument, SpecPatch, StatusAck, StatusBatch
from registration.protocol import LabelPatch

routes = web.RouteTableDef()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    hidden = ("machine_id", "labels_local", "labels_token", "labels_operator")
    out = {k: v for k, v in row.items() if k not in hidden}
    out["group"] = out.pop("group_name")
    return out


@routes.get("/api/v1/devices")
@operator("viewer")
async def list_devices(request: web.Request) -> web.Response:
    selector = selectors.parse(request.query.get("selector"))
    limit = query_int(request, "limit", 100, 1, 1000)
    after = request.query.get("after") or None

    def read(db: Database) -> tuple[list[dict[str, Any]], int]:
        return devices_store.list_page(db, selector, limit + 1, after), devices_store.count(
            db, selector
        )

    rows, total = await request.app[STORE].read(read)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(
        {
            "items": [_public(r) for r in rows],
            "total": total,
            "next": rows[-1]["id"] if more and rows else None,
        }
    )


async def _get(request: web.Request, device_id: str) -> dict[str, Any]:
    def read(db: Database) -> dict[str, Any] | None:
        row = devices_store.get(db, device_id)
        if row is not None:
            row["certificates"] = [
                {**c, "serial": str(c["serial"])}
                for c in devices_store.certificates_of(db, device_id)
            ]
            row["state"] = state_store.get(db, device_id)
            row["status_events"] = state_store.event_counts(db, device_id)
        return row

    row = await request.app[STORE].read(read)
    if row is None:
        raise NotFound(f"no device {device_id}")
    return row


@routes.get("/api/v1/devices/{device_id}")
@operator("viewer")
async def show_device(request: web.Request) -> web.Response:
    row = await _get(request, request.match_info["device_id"])
    public = _public(row)
    state = row.get("state") or {}
    public.pop("state", None)
    public["desired"] = {"generation": state.get("generation", 0), "spec": state.get("spec")}
    public["reported"] = {
        "observed_generation": state.get("observed_generation", 0),
        "conditions": state.get("conditions", []),
        "acked_seq": state.get("acked_seq", 0),
        "status_at": state.get("status_at"),
        "status_events": public.pop("status_events"),
    }
    public["groups"] = state.get("groups", [])
    public["override"] = state.get("override", {})
    public["online"] = bool(state.get("online", 0))
    public["last_seen"] = state.get("last_seen")
    public["in_sync"] = public["desired"]["generation"] == state.get("observed_generation")
    public["label_sources"] = {
        "local": row["labels_local"],
        "token": row["labels_token"],
        "operator": row["labels_operator"],
    }
    return json_response(public)


@routes.patch("/api/v1/devices/{device_id}/labels")
@operator("operator")
async def label_device(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    patch = await read_model(request, LabelPatch)
    who = current_operator(request)

    def write(db: Database) -> tuple[dict[str, Any] | None, list[specs.Change]]:
        row = devices_store.set_operator_labels(db, device_id, patch.labels)
        if row is None:
            return None, []
        audit(db, who.username, "device.label", device_id, labels=patch.labels)
        return row, specs.recompute(db, [device_id])

    row, changes = await request.app[STORE].write(write)
    if row is None:
        raise NotFound(f"no device {device_id}")
    await request.app[CHANNEL].nudge(changes)
    return json_response(_public(row))


def _device_action(action: str) -> Any:
    verb = {"delete": devices_store.delete, "reset": devices_store.reset}[action]

    async def handler(request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        who = current_operator(request)

        def write(db: Database) -> bool:
            done = bool(verb(db, device_id))
            if done:
                audit(db, who.username, f"device.{action}", device_id)
            return done

        if not await request.app[STORE].write(write):
            raise NotFound(f"no device {device_id}")
        await revocation.refresh_crl(request.app)
        await request.app[SESSIONS].end([device_id])
        return json_response({"id": device_id, "status": action})

    return operator("operator")(handler)


routes.delete("/api/v1/devices/{device_id}")(_device_action("delete"))
routes.post("/api/v1/devices/{device_id}/reset")(_device_action("reset"))


@routes.get("/api/v1/devices/{device_id}/whoami")
@device
async def whoami(request: web.Request) -> web.Response:
    me = current_device(request)
    row = await request.app[STORE].read(lambda db: devices_store.get(db, me.device_id))
    if row is None:
        raise NotFound(f"no device {me.device_id}")
    return json_response(
        {
            "device_id": me.device_id,
            "serial": str(me.serial),
            "name": row["name"],
            "labels": row["labels"],
        }
    )


@routes.get("/api/v1/devices/{device_id}/spec")
async def device_spec(request: web.Request) -> web.StreamResponse:
    """The device (mTLS, its own id only) or an operator reads the computed spec.
    The ETag covers the generation and the acknowledged status seq: If-None-Match gives 304
    while neither changed."""
    device_id = request.match_info["device_id"]
    if peer_certificate(request) is not None:
        await authenticate_device(request)
    else:
        await authenticate_operator(request)
    state = await request.app[STORE].read(lambda db: state_store.get(db, device_id))
    if state is None:
        raise NotFound(f"no device {device_id}")
    etag = f'"g{state["generation"]}.a{state["acked_seq"]}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    doc = SpecDocument(
        device_id=device_id,
        generation=state["generation"],
        spec=Spec.model_validate(state["spec"]),
        acked_seq=state["acked_seq"],
    )
    response = json_response(doc)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.put("/api/v1/devices/{device_id}/override")
@operator("operator")
async def set_override(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    patch = await read_model(request, SpecPatch, SPEC_BODY_BYTES)
    who = current_operator(request)
    override = patch.model_dump(exclude_none=True)

    def write(db: Database) -> tuple[bool, list[specs.Change]]:
        if devices_store.get(db, device_id) is None:
            return False, []
        state_store.set_override(db, device_id, override)
        audit(db, who.username, "device.override", device_id)
        return True, specs.recompute(db, [device_id])

    found, changes = await request.app[STORE].write(write)
    if not found:
        raise NotFound(f"no device {device_id}")
    await request.app[CHANNEL].nudge(changes)
    state = await request.app[STORE].read(lambda db: state_store.get(db, device_id))
    assert state is not None  # noqa: S101 - just written
    return json_response(
        {"device_id": device_id, "generation": state["generation"], "override": override}
    )


@routes.post("/api/v1/devices/{device_id}/status")
@device
async def post_status(request: web.Request) -> web.Response:
    """The HTTP path for status: the same exactly-once application as MQTT."""
    me = current_device(request)
    batch = await read_model(request, StatusBatch)
    acked, applied = await request.app[CHANNEL].apply_status(me.device_id, batch, "http")
    return json_response(StatusAck(acked_seq=acked, applied=applied))


@routes.get("/api/v1/stats")
@operator("viewer")
async def stats(request: web.Request) -> web.Response:
    channel = request.app[CHANNEL].stats
    return json_response({"channel": dataclasses.asdict(channel)})
