"""Registration tokens: create (shown once, with copy), revoke, and the seed ISO link."""

from __future__ import annotations

import time

from aiohttp import web

from edge_server import downloads
from edge_server.keys import CA, NOTIFIER, SETTINGS, STORE
from edge_server.ops import groups as group_ops
from edge_server.ops import tokens as token_ops
from edge_server.web.forms import FormError, labels, validation, whole
from edge_server.web.render import render
from edge_server.web.session import current, page
from registration.document import ValidationError
from registration.errors import RegistrationError
from registration.protocol import TokenCreate

routes = web.RouteTableDef()

HOUR = 3600
MAX_TTL_HOURS = 24 * 365 * 10


async def _page(
    request: web.Request,
    created: token_ops.TokenCreated | None = None,
    error: FormError | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    store = request.app[STORE]
    tokens = (await token_ops.list_all(store)).items
    groups = ["default", *(g.name for g in (await group_ops.list_all(store)).items)]
    now = time.time()

    def state(t: token_ops.TokenRow) -> str:
        if t.revoked_at is not None:
            return "revoked"
        if t.expires_at is not None and t.expires_at < now:
            return "expired"
        if t.max_uses is not None and t.uses >= t.max_uses:
            return "used up"
        return "active"

    return render(
        request,
        "tokens.html",
        {
            "title": "Registration tokens",
            "tokens": [(t, state(t)) for t in reversed(tokens)],
            "groups": groups,
            "created": created,
            "error": error,
            "form": form
            or {"group": "default", "ttl": "24", "uses": "1", "labels": "", "description": ""},
            "server_url": request.app[SETTINGS].local_url,
        },
        status=400 if error else 201 if created else 200,
    )


@routes.get("/tokens")
@page
async def tokens(request: web.Request) -> web.Response:
    return await _page(request)


@routes.post("/tokens")
@page
async def create(request: web.Request) -> web.Response:
    posted = await request.post()
    form = {k: str(posted.get(k, "")) for k in ("group", "ttl", "uses", "labels", "description")}
    app = request.app
    try:
        groups = {"default", *(g.name for g in (await group_ops.list_all(app[STORE])).items)}
        if form["group"] not in groups:
            raise FormError("group", f"there is no group {form['group']!r}")
        ttl = whole("ttl", form["ttl"], 1, MAX_TTL_HOURS, None)
        uses = whole("uses", form["uses"], 1, 1_000_000, None)
        try:
            body = TokenCreate(
                group=form["group"],
                labels=labels("labels", form["labels"]),
                ttl_seconds=ttl * HOUR if ttl is not None else None,
                max_uses=uses,
                description=form["description"][:1024],
            )
        except ValidationError as e:
            raise validation("labels", e) from e
        except RegistrationError as e:
            raise FormError("labels", str(e)) from e
    except FormError as e:
        return await _page(request, error=e, form=form)
    created = await app[NOTIFIER].run(
        token_ops.create(app[STORE], current(request).actor, body, app[CA].fingerprint)
    )
    return await _page(request, created=created)


@routes.get("/tokens/{token_id}/seed.iso")
@page
async def seed_iso(request: web.Request) -> web.StreamResponse:
    """The token's seed ISO for a signed-in operator: the API's download (Range resumes a
    cut one), with the dashboard's HTML error pages (no base ISO imported, revoked token)."""
    return await downloads.seed_iso(request)


@routes.post("/tokens/{token_id}/revoke")
@page
async def revoke(request: web.Request) -> web.StreamResponse:
    app = request.app
    token_id = request.match_info["token_id"]
    await app[NOTIFIER].run(token_ops.revoke(app[STORE], current(request).actor, token_id))
    raise web.HTTPSeeOther("/tokens")
