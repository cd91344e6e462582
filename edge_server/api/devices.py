"""Device inventory for operators, and ``whoami`` for devices (mTLS)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlite_utils import Database

from edge_server import selectors
from edge_server.api.http import json_response, query_int, read_model
from edge_server.auth import current_device, current_operator, device, operator
from edge_server.errors import NotFound
from edge_server.keys import STORE
from edge_server.store import devices as devices_store
from edge_server.store.rows import audit
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

    def write(db: Database) -> dict[str, Any] | None:
        row = devices_store.set_operator_labels(db, device_id, patch.labels)
        if row is not None:
            audit(db, who.username, "device.label", device_id, labels=patch.labels)
        return row

    row = await request.app[STORE].write(write)
    if row is None:
        raise NotFound(f"no device {device_id}")
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
