"""Operator API tokens: create, list, revoke (admin only)."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field
from sqlite_utils import Database

from edge_server import passwords
from edge_server.api.http import json_response, read_model
from edge_server.auth import current_operator, operator
from edge_server.errors import NotFound
from edge_server.keys import STORE
from edge_server.store import users as users_store
from edge_server.store.rows import audit
from registration.protocol import Document

routes = web.RouteTableDef()


class ApiTokenCreate(Document):
    username: str = Field(default="admin", max_length=64)
    description: str = Field(default="", max_length=256)


@routes.post("/api/v1/api-tokens")
@operator("admin")
async def create_api_token(request: web.Request) -> web.Response:
    body = await read_model(request, ApiTokenCreate)
    who = current_operator(request)
    token_id, token, secret_hash = passwords.new_api_token()

    def write(db: Database) -> bool:
        user = users_store.by_name(db, body.username)
        if user is None:
            return False
        users_store.create_api_token(db, token_id, user["id"], secret_hash, body.description)
        audit(db, who.username, "api_token.create", token_id, user=body.username)
        return True

    if not await request.app[STORE].write(write):
        raise NotFound(f"no user {body.username}")
    return json_response({"id": token_id, "token": token, "username": body.username}, 201)


@routes.get("/api/v1/api-tokens")
@operator("admin")
async def list_api_tokens(request: web.Request) -> web.Response:
    return json_response({"items": await request.app[STORE].read(users_store.list_api_tokens)})


@routes.delete("/api/v1/api-tokens/{token_id}")
@operator("admin")
async def revoke_api_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    who = current_operator(request)

    def write(db: Database) -> bool:
        done = users_store.revoke_api_token(db, token_id)
        if done:
            audit(db, who.username, "api_token.revoke", token_id)
        return done

    if not await request.app[STORE].write(write):
        raise NotFound(f"no active API token {token_id}")
    return json_response({"id": token_id, "status": "revoked"})
