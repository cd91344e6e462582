"""The devices table (search, selector, keyset paging: state in the URL) and a device's
page: facts, labels (editable), spec against reported state, conditions, timeline,
revoke and delete behind a confirmation page."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from edge_server import selectors
from edge_server.errors import BadRequest
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import devices as device_ops
from edge_server.web import status
from edge_server.web.forms import FormError, labels, pretty, validation
from edge_server.web.render import render
from edge_server.web.session import current, page
from registration.document import ValidationError
from registration.errors import RegistrationError
from registration.protocol import LabelPatch

routes = web.RouteTableDef()

PAGE_SIZES = (25, 50, 100, 200)


@routes.get("/devices")
@page
async def devices(request: web.Request) -> web.Response:
    q = request.query
    search = q.get("q", "").strip()[:128]
    selector_text = q.get("selector", "").strip()[:1024]
    limit = int(q["limit"]) if q.get("limit", "").isdigit() else 50
    limit = limit if limit in PAGE_SIZES else 50
    after = q.get("after") or None
    error = ""
    try:
        selector = selectors.parse(selector_text)
    except BadRequest as e:
        error, selector = e.detail, selectors.parse("")
    found = await device_ops.list_page(request.app[STORE], selector, limit, after, search)
    state = {"q": search, "selector": selector_text, "limit": limit}

    def url(**changes: object) -> str:
        merged = {k: v for k, v in {**state, **changes}.items() if v not in ("", None)}
        if merged.get("limit") == 50:
            del merged["limit"]
        return "/devices" + ("?" + urlencode(merged) if merged else "")

    return render(
        request,
        "devices.html",
        {
            "title": "Devices",
            "rows": [status.cells(d) for d in found.items],
            "total": found.total,
            "state": state,
            "error": error,
            "after": after,
            "next_url": url(after=found.next) if found.next else None,
            "first_url": url() if after else None,
            "page_sizes": PAGE_SIZES,
            "live_selector": "" if error else selector_text,
            "live_search": search,
            "done": int(q["done"]) if q.get("done", "").isdigit() else None,
            "done_action": q.get("action", "")[:16],
        },
    )


async def _detail(
    request: web.Request, device_id: str, error: FormError | None = None, labels_text: str = ""
) -> web.Response:
    store = request.app[STORE]
    detail = await device_ops.show(store, device_id)
    summary = await device_ops.summary(store, device_id)
    assert summary is not None  # noqa: S101 - shown just above
    timeline = await device_ops.timeline(store, device_id)
    facts = {k: v for k, v in detail.facts.items() if isinstance(v, str | int | float)}
    return render(
        request,
        "device.html",
        {
            "title": detail.name,
            "d": detail,
            "cells": status.cells(summary),
            "facts": facts,
            "labels_text": labels_text
            or "\n".join(f"{k}={v}" for k, v in sorted(detail.labels.items())),
            "spec": pretty(detail.desired.spec) if detail.desired.spec else "",
            "override": pretty(detail.override) if detail.override else "",
            "timeline": timeline,
            "error": error,
        },
        status=400 if error else 200,
    )


@routes.get("/devices/{device_id}")
@page
async def device(request: web.Request) -> web.Response:
    return await _detail(request, request.match_info["device_id"])


@routes.post("/devices/{device_id}/labels")
@page
async def edit_labels(request: web.Request) -> web.StreamResponse:
    """The form holds every label; the difference to the current ones becomes the patch
    (a removed line removes the operator's label)."""
    device_id = request.match_info["device_id"]
    form = await request.post()
    text = str(form.get("labels", ""))
    app = request.app
    try:
        wanted = labels("labels", text)
        current_labels = (await device_ops.show(app[STORE], device_id)).labels
        changes: dict[str, str | None] = {
            k: v for k, v in wanted.items() if current_labels.get(k) != v
        }
        changes.update({k: None for k in current_labels if k not in wanted})
        try:
            patch = LabelPatch(labels=changes)
        except ValidationError as e:
            raise validation("labels", e) from e
        except RegistrationError as e:
            raise FormError("labels", str(e)) from e
    except FormError as e:
        return await _detail(request, device_id, e, text)
    if changes:
        await app[NOTIFIER].run(
            device_ops.label(app[STORE], current(request).actor, device_id, patch)
        )
    raise web.HTTPSeeOther(f"/devices/{device_id}")


ACTIONS = {
    "revoke": (
        device_ops.reset,
        "Revoke",
        "Its certificates are revoked at once: its next call is refused and its MQTT session "
        "ends. The record stays; the same machine may register again with a token.",
    ),
    "delete": (
        device_ops.delete,
        "Delete",
        "Its certificates are revoked and its record, state and history are forgotten.",
    ),
}


@routes.get("/devices/{device_id}/{action:revoke|delete}")
@page
async def confirm(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    _, verb, consequence = ACTIONS[request.match_info["action"]]
    detail = await device_ops.show(request.app[STORE], device_id)
    return render(
        request,
        "confirm.html",
        {
            "title": f"{verb} 1 device?",
            "question": f"{detail.name} ({detail.id})",
            "consequence": consequence,
            "action": request.path,
            "button": f"{verb} 1 device",
            "back": f"/devices/{device_id}",
        },
    )


@routes.post("/devices/{device_id}/{action:revoke|delete}")
@page
async def act(request: web.Request) -> web.StreamResponse:
    device_id = request.match_info["device_id"]
    action = request.match_info["action"]
    verb = ACTIONS[action][0]
    app = request.app
    await app[NOTIFIER].run(verb(app[STORE], current(request).actor, device_id))
    raise web.HTTPSeeOther(f"/devices/{device_id}" if action == "revoke" else "/devices")
