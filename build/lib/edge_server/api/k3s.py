"""K3s: the server node of a cluster reports how to join it (``ops.k3s``)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response, read_model
from edge_server.auth import current_device, device
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import k3s as k3s_ops
from registration.protocol import K3sServerReport

routes = web.RouteTableDef()


@routes.post("/api/v1/devices/{device_id}/k3s")
@device
async def report_server(request: web.Request) -> web.Response:
    """The device (mTLS, its own id only) is its cluster's K3s server node: its join URL,
    token and running version. 409 from any other device."""
    me = current_device(request)
    body = await read_model(request, K3sServerReport)
    app = request.app
    ack = await app[NOTIFIER].run(k3s_ops.report_server(app[STORE], me.device_id, body))
    return json_response(ack)
