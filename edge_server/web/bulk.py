"""Bulk actions on the devices table: the devices ticked, or "all N matching" the table's
search and selector. Every action goes through a confirmation page that states the count;
then each device gets the same operation the device page runs (``ops.devices``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from edge_server import selectors
from edge_server.errors import BadRequest, NotFound
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import devices as device_ops
from edge_server.web.forms import FormError, labels, validation
from edge_server.web.render import render
from edge_server.web.session import current, page
from registration.document import ValidationError
from registration.errors import RegistrationError
from registration.protocol import LabelPatch

routes = web.RouteTableDef()

Posted = MultiDictProxy[Any]  # what ``request.post()`` gives
VERBS = {"label": "Set labels on", "revoke": "Revoke", "delete": "Delete"}
CHUNK = 1000


async def _targets(request: web.Request, form: Posted) -> list[str]:
    if form.get("all") != "1":
        return [str(v) for v in form.getall("id", [])][:CHUNK]
    try:
        selector = selectors.parse(str(form.get("selector", "")))
    except BadRequest as e:
        raise FormError("selector", e.detail) from e
    search = str(form.get("q", ""))
    found: list[str] = []
    after: str | None = None
    while True:
        listed = await device_ops.list_page(request.app[STORE], selector, CHUNK, after, search)
        found += [d.id for d in listed.items]
        if listed.next is None:
            return found
        after = listed.next


def _patch(form: Posted) -> LabelPatch:
    try:
        return LabelPatch(labels=dict(labels("labels", str(form.get("labels", "")))))
    except ValidationError as e:
        raise validation("labels", e) from e
    except RegistrationError as e:
        raise FormError("labels", str(e)) from e


@routes.post("/devices/bulk")
@page
async def bulk(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    action = str(form.get("action", ""))
    back = "/devices"
    try:
        if action not in VERBS:
            raise FormError("action", "choose an action")
        patch = _patch(form) if action == "label" else None
        if patch is not None and not patch.labels:
            raise FormError("labels", "give at least one key=value")
        targets = await _targets(request, form)
        if not targets:
            raise FormError("id", "tick at least one device, or choose all matching")
    except FormError as e:
        return render(request, "error.html", {"title": "Nothing done", "detail": e.message}, 400)
    n = len(targets)
    noun = f"{n} device{'s' if n != 1 else ''}"
    if form.get("confirmed") != "1":
        what = f" ({', '.join(f'{k}={v}' for k, v in patch.labels.items())})" if patch else ""
        return render(
            request,
            "bulk_confirm.html",
            {
                "title": f"{VERBS[action]} {noun}?",
                "question": f"{VERBS[action]} {noun}{what}?",
                "fields": [(k, str(v)) for k, v in form.items() if k != "csrf"],
                "button": f"{VERBS[action]} {noun}",
                "back": back,
            },
        )
    app = request.app
    actor = current(request).actor
    done = 0
    for device_id in targets:
        try:
            if patch is not None:
                await app[NOTIFIER].run(device_ops.label(app[STORE], actor, device_id, patch))
            elif action == "revoke":
                await app[NOTIFIER].run(device_ops.reset(app[STORE], actor, device_id))
            else:
                await app[NOTIFIER].run(device_ops.delete(app[STORE], actor, device_id))
            done += 1
        except NotFound:
            continue  # deleted meanwhile
    raise web.HTTPSeeOther(f"{back}?done={done}&action={action}")
