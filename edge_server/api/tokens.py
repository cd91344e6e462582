"""Registration tokens: create (the full token is shown once), list, revoke."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from sqlite_utils import Database

from edge_server.api.http import json_response, read_model
from edge_server.auth import current_operator, operator
from edge_server.errors import NotFound
from edge_server.keys import CA, STORE
from edge_server.store import tokens as tokens_store
from edge_server.store.rows import audit
from registration import templating, tokens
from registration.protocol import TokenCreate

routes = web.RouteTableDef()


@routes.post("/api/v1/tokens")
@operator("operator")
async def create_token(request: web.Request) -> web.Response:
    body = await read_model(request, TokenCreate)
    templating.validate(body.name_template)
    for template in body.labels.values():
        templating.validate(template)
    who = current_operator(request)
    token = tokens.generate(request.app[CA].fingerprint)
    expires_at = time.time() + body.ttl_seconds if body.ttl_seconds is not None else None

    def write(db: Database) -> dict[str, Any] | None:
        tokens_store.create(
            db,
            token_id=token.token_id,
            secret_hash=tokens.hash_secret(token.secret),
            group=body.group,
            labels=body.labels,
            name_template=body.name_template,
            description=body.description,
            max_uses=body.max_uses,
            expires_at=expires_at,
            created_by=who.username,
        )
        audit(db, who.username, "token.create", token.token_id, group=body.group)
        return tokens_store.get(db, token.token_id)

    row = await request.app[STORE].write(write)
    return json_response({**(row or {}), "token": str(token)}, status=201)


@routes.get("/api/v1/tokens")
@operator("viewer")
async def list_tokens(request: web.Request) -> web.Response:
    rows = await request.app[STORE].read(tokens_store.list_all)
    return json_response({"items": rows})


@routes.get("/api/v1/tokens/{token_id}")
@operator("viewer")
async def show_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    row = await request.app[STORE].read(lambda db: tokens_store.get(db, token_id))
    if row is None:
        raise NotFound(f"no registration token {token_id}")
    return json_response(row)


@routes.delete("/api/v1/tokens/{token_id}")
@operator("operator")
async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    who = current_operator(request)

    def write(db: Database) -> dict[str, Any] | None:
        if tokens_store.get(db, token_id) is None:
            return None
        tokens_store.revoke(db, token_id)
        audit(db, who.username, "token.revoke", token_id)
        return tokens_store.get(db, token_id)

    row = await request.app[STORE].write(write)
    if row is None:
        raise NotFound(f"no registration token {token_id}")
    return json_response(row)
