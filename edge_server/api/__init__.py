"""HTTP API: one module per resource. ``routes()`` gathers them for the app factory."""

from __future__ import annotations

from aiohttp import web

from edge_server.api import (
    api_tokens,
    artifacts,
    certificates,
    devices,
    groups,
    health,
    k3s,
    openapi,
    register,
    seed_images,
    tokens,
)


def routes() -> list[web.RouteDef]:
    return [
        *health.routes,
        *register.routes,
        *tokens.routes,
        *seed_images.routes,
        *devices.routes,
        *certificates.routes,
        *k3s.routes,
        *groups.routes,
        *api_tokens.routes,
        *artifacts.routes,
        *openapi.routes,
    ]
