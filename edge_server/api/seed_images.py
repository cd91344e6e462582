"""``GET /api/v1/tokens/{token_id}/seed.iso``: the token's seed ISO, streamed
(:func:`edge_server.downloads.seed_iso`; the dashboard serves the same download)."""

from __future__ import annotations

from aiohttp import web

from edge_server import downloads
from edge_server.auth import operator

routes = web.RouteTableDef()


@routes.get("/api/v1/tokens/{token_id}/seed.iso")
@operator("operator")
async def seed_iso(request: web.Request) -> web.StreamResponse:
    """The seeded ISO, whole (200) or from a Range (206), a chunk at a time."""
    return await downloads.seed_iso(request)
