"""Operator API tokens: create (the token is returned once), revoke, list."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sqlite_utils import Database

from edge_server import passwords
from edge_server.errors import NotFound
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.ops.rows import Row
from edge_server.store import Store
from edge_server.store import users as users_store
from edge_server.store.rows import audit
from registration import document as doc
from registration.protocol import Document


class ApiTokenCreate(Document):
    username: str = doc.Field(default="admin", max_length=64)
    description: str = doc.Field(default="", max_length=256)


class ApiTokenCreated(Row):
    id: str
    token: str = Field(description="the full API token; shown this once")
    username: str


class ApiTokenRow(Row):
    id: str
    username: str
    description: str
    created_at: float
    revoked_at: float | None


class ApiTokenList(Row):
    items: list[ApiTokenRow]


class ApiTokenRevoked(Row):
    id: str
    status: Literal["revoked"]


async def create(store: Store, actor: Actor, body: ApiTokenCreate) -> Done[ApiTokenCreated]:
    token_id, token, secret_hash = passwords.new_api_token()

    def write(db: Database) -> None:
        user = users_store.by_name(db, body.username)
        if user is None:
            raise NotFound(f"no user {body.username}")
        users_store.create_api_token(db, token_id, user["id"], secret_hash, body.description)
        audit(db, actor.name, "api_token.create", token_id, user=body.username)

    await store.write(write)
    return Done(
        ApiTokenCreated(id=token_id, token=token, username=body.username),
        Changes.of(Event("api_token.create", token_id, actor.name)),
    )


async def revoke(store: Store, actor: Actor, token_id: str) -> Done[ApiTokenRevoked]:
    def write(db: Database) -> None:
        if not users_store.revoke_api_token(db, token_id):
            raise NotFound(f"no active API token {token_id}")
        audit(db, actor.name, "api_token.revoke", token_id)

    await store.write(write)
    return Done(
        ApiTokenRevoked(id=token_id, status="revoked"),
        Changes.of(Event("api_token.revoke", token_id, actor.name)),
    )


async def list_all(store: Store) -> ApiTokenList:
    rows = await store.read(users_store.list_api_tokens)
    return ApiTokenList(items=[ApiTokenRow.model_validate(r) for r in rows])
