"""Registration tokens: create (the full token is returned once), revoke, list, show."""

from __future__ import annotations

import time

from pydantic import Field
from sqlite_utils import Database

from edge_server.errors import NotFound
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.ops.rows import Row
from edge_server.sealing import TokenSealer
from edge_server.store import Store
from edge_server.store import tokens as tokens_store
from edge_server.store.rows import audit
from registration import templating, tokens
from registration.protocol import TokenCreate


class TokenRow(Row):
    """A registration token, never its secret."""

    id: str
    group_name: str
    labels: dict[str, str] = Field(description="label templates, rendered at registration")
    name_template: str
    description: str
    max_uses: int | None
    uses: int
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    created_by: str


class TokenCreated(TokenRow):
    token: str = Field(description="the full token; shown this once")


class TokenList(Row):
    items: list[TokenRow]


async def create(
    store: Store,
    actor: Actor,
    body: TokenCreate,
    ca_fingerprint: str,
    sealer: TokenSealer | None = None,
) -> Done[TokenCreated]:
    """A new token. With ``sealer`` its secret is also kept sealed, so the server can serve
    seed ISOs for it later (``ops.seed_images``)."""
    templating.validate(body.name_template)
    for template in body.labels.values():
        templating.validate(template)
    token = tokens.generate(ca_fingerprint)
    expires_at = time.time() + body.ttl_seconds if body.ttl_seconds is not None else None
    sealed = sealer.seal(token.token_id, token.secret) if sealer is not None else None

    def write(db: Database) -> TokenCreated:
        tokens_store.create(
            db,
            token_id=token.token_id,
            secret_hash=tokens.hash_secret(token.secret),
            secret_sealed=sealed,
            group=body.group,
            labels=body.labels,
            name_template=body.name_template,
            description=body.description,
            max_uses=body.max_uses,
            expires_at=expires_at,
            created_by=actor.name,
        )
        audit(db, actor.name, "token.create", token.token_id, group=body.group)
        return TokenCreated.model_validate({**_get(db, token.token_id), "token": str(token)})

    row = await store.write(write)
    return Done(row, Changes.of(Event("token.create", row.id, actor.name)))


async def revoke(store: Store, actor: Actor, token_id: str) -> Done[TokenRow]:
    def write(db: Database) -> TokenRow:
        if tokens_store.get(db, token_id) is None:
            raise NotFound(f"no registration token {token_id}")
        tokens_store.revoke(db, token_id)
        audit(db, actor.name, "token.revoke", token_id)
        return TokenRow.model_validate(_get(db, token_id))

    row = await store.write(write)
    return Done(row, Changes.of(Event("token.revoke", token_id, actor.name)))


async def list_all(store: Store) -> TokenList:
    rows = await store.read(tokens_store.list_all)
    return TokenList(items=[TokenRow.model_validate(r) for r in rows])


async def show(store: Store, token_id: str) -> TokenRow:
    row = await store.read(lambda db: tokens_store.get(db, token_id))
    if row is None:
        raise NotFound(f"no registration token {token_id}")
    return TokenRow.model_validate(row)


def _get(db: Database, token_id: str) -> dict[str, object]:
    row = tokens_store.get(db, token_id)
    assert row is not None  # noqa: S101 - read inside the job that wrote it
    return row
