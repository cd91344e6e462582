"""Liveness and the public CA certificate (what a device pins against its token)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response
from edge_server.keys import CA_PEM

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/api/v1/ca")
async def ca_certificate(request: web.Request) -> web.Response:
    """Public: devices fetch it, then check its sha256 against their token before trusting."""
    return web.Response(text=request.app[CA_PEM], content_type="application/x-pem-file")
