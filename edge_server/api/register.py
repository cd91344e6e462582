"""``POST /api/v1/register``: the one unauthenticated write, guarded by the token."""

from __future__ import annotations

from aiohttp import web

from edge_server import registrar
from edge_server.api.http import json_response, read_model
from edge_server.errors import ServerError
from edge_server.keys import CA, CHANNEL, REGISTER_LIMITER, SETTINGS, STORE
from registration.errors import RegistrationError
from registration.protocol import RegisterRequest

routes = web.RouteTableDef()


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


@routes.post("/api/v1/register")
async def register(request: web.Request) -> web.Response:
    limiter = request.app[REGISTER_LIMITER]
    address = client_address(request)
    limiter.check(address)
    settings = request.app[SETTINGS]
    try:
        doc = await read_model(request, RegisterRequest)
        changes, result = await registrar.register(
            request.app[STORE],
            request.app[CA],
            doc,
            api_url=settings.public_url or f"{request.scheme}://{request.host}",
            mqtt_url=settings.device_mqtt_url(request.host),
            cert_lifetime=settings.device_cert_lifetime,
        )
    except (ServerError, RegistrationError):
        limiter.record_failure(address)
        raise
    # A new device gets no nudge: its agent pulls its spec right after this answer, and
    # publishing would cost every registration a broker round. A known device may hold a
    # retained nudge from before (a reset resets its acked seq), so it gets a fresh one.
    if not result.created:
        await request.app[CHANNEL].nudge(changes)
    return json_response(result, status=201 if result.created else 200)
