"""Device inventory for operators, and ``whoami``, ``spec`` and ``status`` for devices (mTLS)."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from edge_server import selectors
from edge_server.api.http import SPEC_BODY_BYTES, json_response, query_int, read_model
from edge_server.auth import (
    authenticate_device,
    authenticate_operator,
    current_actor,
    current_device,
    device,
    operator,
    peer_certificate,
)
from edge_server.keys import ARTIFACTS_SERVED, CHANNEL, NOTIFIER, STORE
from edge_server.ops import devices as device_ops
from edge_server.ops import status as status_ops
from registration.desired import SpecPatch, StatusBatch
from registration.protocol import LabelPatch

routes = web.RouteTableDef()


@routes.get("/api/v1/devices")
@operator("viewer")
async def list_devices(request: web.Request) -> web.Response:
    selector = selectors.parse(request.query.get("selector"))
    limit = query_int(request, "limit", 100, 1, 1000)
    after = request.query.get("after") or None
    return json_response(await device_ops.list_page(request.app[STORE], selector, limit, after))


@routes.get("/api/v1/devices/{device_id}")
@operator("viewer")
async def show_device(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    return json_response(await device_ops.show(request.app[STORE], device_id))


@routes.patch("/api/v1/devices/{device_id}/labels")
@operator("operator")
async def label_device(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    patch = await read_model(request, LabelPatch)
    app = request.app
    row = await app[NOTIFIER].run(
        device_ops.label(app[STORE], current_actor(request), device_id, patch)
    )
    return json_response(row)


@routes.delete("/api/v1/devices/{device_id}")
@operator("operator")
async def delete_device(request: web.Request) -> web.Response:
    return await _revoke(request, device_ops.delete)


@routes.post("/api/v1/devices/{device_id}/reset")
@operator("operator")
async def reset_device(request: web.Request) -> web.Response:
    return await _revoke(request, device_ops.reset)


async def _revoke(request: web.Request, action: device_ops.Revoke) -> web.Response:
    """Delete or reset: both revoke the device's certificates (``ops.devices``)."""
    app = request.app
    device_id = request.match_info["device_id"]
    done = await app[NOTIFIER].run(action(app[STORE], current_actor(request), device_id))
    return json_response(done)


@routes.get("/api/v1/devices/{device_id}/whoami")
@device
async def whoami(request: web.Request) -> web.Response:
    me = current_device(request)
    return json_response(await device_ops.identity(request.app[STORE], me.device_id, me.serial))


@routes.get("/api/v1/devices/{device_id}/spec")
async def device_spec(request: web.Request) -> web.StreamResponse:
    """The device (mTLS, its own id only) or an operator reads the computed spec.
    The ETag covers the generation and the acknowledged status seq: If-None-Match gives 304
    while neither changed."""
    device_id = request.match_info["device_id"]
    operator_call = peer_certificate(request) is None
    if operator_call:
        await authenticate_operator(request)
    else:
        await authenticate_device(request)
    doc = await device_ops.spec_document(request.app[STORE], device_id, operator=operator_call)
    etag = f'"g{doc.generation}.a{doc.acked_seq}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    response = json_response(doc)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.put("/api/v1/devices/{device_id}/override")
@operator("operator")
async def set_override(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    patch = await read_model(request, SpecPatch, SPEC_BODY_BYTES)
    app = request.app
    done = await app[NOTIFIER].run(
        device_ops.override(app[STORE], current_actor(request), device_id, patch)
    )
    return json_response(done)


@routes.post("/api/v1/devices/{device_id}/status")
@device
async def post_status(request: web.Request) -> web.Response:
    """The HTTP path for status: the same operation as MQTT's (``ops.status``)."""
    me = current_device(request)
    batch = await read_model(request, StatusBatch)
    app = request.app
    ack = await app[NOTIFIER].run(status_ops.apply_status(app[STORE], me.device_id, batch, "http"))
    app[CHANNEL].count_status(len(batch.events), ack.applied)
    return json_response(ack)


@routes.get("/api/v1/stats")
@operator("viewer")
async def stats(request: web.Request) -> web.Response:
    channel = request.app[CHANNEL].stats
    served = request.app[ARTIFACTS_SERVED]
    return json_response(
        {"channel": dataclasses.asdict(channel), "artifacts": dataclasses.asdict(served)}
    )
