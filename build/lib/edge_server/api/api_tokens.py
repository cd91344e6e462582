"""Operator API tokens: create, list, revoke (admin only; ``ops.api_tokens``)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import json_response, read_model
from edge_server.auth import current_actor, operator
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import api_tokens as api_token_ops
from edge_server.ops.api_tokens import ApiTokenCreate

__all__ = ["ApiTokenCreate", "routes"]

routes = web.RouteTableDef()


@routes.post("/api/v1/api-tokens")
@operator("admin")
async def create_api_token(request: web.Request) -> web.Response:
    body = await read_model(request, ApiTokenCreate)
    app = request.app
    row = await app[NOTIFIER].run(api_token_ops.create(app[STORE], current_actor(request), body))
    return json_response(row, 201)


@routes.get("/api/v1/api-tokens")
@operator("admin")
async def list_api_tokens(request: web.Request) -> web.Response:
    return json_response(await api_token_ops.list_all(request.app[STORE]))


@routes.delete("/api/v1/api-tokens/{token_id}")
@operator("admin")
async def revoke_api_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    app = request.app
    row = await app[NOTIFIER].run(
        api_token_ops.revoke(app[STORE], current_actor(request), token_id)
    )
    return json_response(row)
