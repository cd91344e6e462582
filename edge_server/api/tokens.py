"""Registration tokens: create (the full token is shown once), list, revoke (``ops.tokens``)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response, read_model
from edge_server.auth import current_actor, operator
from edge_server.keys import CA, NOTIFIER, STORE, TOKEN_SEALER
from edge_server.ops import tokens as token_ops
from registration.protocol import TokenCreate

routes = web.RouteTableDef()


@routes.post("/api/v1/tokens")
@operator("operator")
async def create_token(request: web.Request) -> web.Response:
    body = await read_model(request, TokenCreate)
    app = request.app
    row = await app[NOTIFIER].run(
        token_ops.create(
            app[STORE], current_actor(request), body, app[CA].fingerprint, app[TOKEN_SEALER]
        )
    )
    return json_response(row, status=201)


@routes.get("/api/v1/tokens")
@operator("viewer")
async def list_tokens(request: web.Request) -> web.Response:
    return json_response(await token_ops.list_all(request.app[STORE]))


@routes.get("/api/v1/tokens/{token_id}")
@operator("viewer")
async def show_token(request: web.Request) -> web.Response:
    return json_response(await token_ops.show(request.app[STORE], request.match_info["token_id"]))


@routes.delete("/api/v1/tokens/{token_id}")
@operator("operator")
async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    app = request.app
    row = await app[NOTIFIER].run(token_ops.revoke(app[STORE], current_actor(request), token_id))
    return json_response(row)
