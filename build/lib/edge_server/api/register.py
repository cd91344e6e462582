"""``POST /api/v1/register``: the one unauthenticated write, guarded by the token."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response, read_model
from edge_server.errors import ServerError
from edge_server.keys import CA, NOTIFIER, REGISTER_LIMITER, SETTINGS, STORE, UPDATE_SIGNER
from edge_server.ops import registration as registration_ops
from registration.errors import RegistrationError
from registration.protocol import RegisterRequest

routes = web.RouteTableDef()


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


@routes.post("/api/v1/register")
async def register(request: web.Request) -> web.Response:
    app = request.app
    limiter = app[REGISTER_LIMITER]
    address = client_address(request)
    limiter.check(address)
    settings = app[SETTINGS]
    try:
        doc = await read_model(request, RegisterRequest)
        result = await app[NOTIFIER].run(
            registration_ops.register(
                app[STORE],
                app[CA],
                doc,
                api_url=settings.public_url or f"{request.scheme}://{request.host}",
                mqtt_url=settings.device_mqtt_url(request.host),
                cert_lifetime=settings.device_cert_lifetime,
                update_signing_key=app[UPDATE_SIGNER].public_key,
            )
        )
    except (ServerError, RegistrationError) as e:
        # Only the client's own mistakes count: a full disk (507) is not a wrong guess.
        if getattr(e, "status", 400) < 500:
            limiter.record_failure(address)
        raise
    return json_response(result, status=201 if result.created else 200)
