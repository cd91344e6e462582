"""Health and the public CA certificate (what a device pins against its token)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response
from edge_server.keys import CA_PEM, STORE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 ``ok``; 503 ``degraded`` while the disk under the database is full (writes get
    507), so a plain HTTP monitor alerts. Costs nothing while healthy; while degraded each
    call probes the disk with one small write, and recovery shows at once."""
    if await request.app[STORE].probe():
        return json_response({"status": "ok"})
    return json_response(
        {
            "status": "degraded",
            "storage": "full",
            "detail": "the disk under the data dir is full: reads work, writes are refused "
            "with 507 until space is freed",
        },
        status=503,
    )


@routes.get("/api/v1/ca")
async def ca_certificate(request: web.Request) -> web.Response:
    """Public: devices fetch it, then check its sha256 against their token before trusting."""
    return web.Response(text=request.app[CA_PEM], content_type="application/x-pem-file")
