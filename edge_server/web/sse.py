"""Live updates: one server-sent event stream per tab (``GET /events``).

It subscribes to the notifier's committed events (``edge_server.notifier``). Events that
arrive together are coalesced (``BATCH_WAIT``): each device named is read once, through
``ops.devices.summary``, and sent as ``event: device`` with the cells the table shows
(``status.cells``) and whether it matches the tab's search and selector, so the page can
say "N new devices match" instead of inserting rows. Other changes go as ``event: change``.
A comment every ``KEEPALIVE`` seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from edge_server import selectors
from edge_server.errors import BadRequest
from edge_server.keys import NOTIFIER, STORE
from edge_server.notifier import Subscription
from edge_server.ops import devices as device_ops
from edge_server.ops.changes import Event
from edge_server.web import status
from edge_server.web.session import signed_in

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

KEEPALIVE = 15.0
BATCH_WAIT = 0.25
BATCH_MAX = 500
MAX_SHOWN = 200
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("web_streams")


@routes.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    if signed_in(request) is None:
        raise web.HTTPUnauthorized(text="sign in first")
    search = request.query.get("q", "").strip()[:128]
    try:
        selector = selectors.parse(request.query.get("selector", "")[:1024])
    except BadRequest:
        selector = selectors.parse("")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - a handler runs in a task
    streams = request.app[STREAMS]
    streams.add(task)
    # ``ids``: the devices the tab shows. They are sent as they are now, after subscribing,
    # so a change committed between the page's render and this connect is not missed.
    shown = [i for i in request.query.get("ids", "").split(",") if i][:MAX_SHOWN]
    with request.app[NOTIFIER].subscribe() as subscription:
        await response.write(b"retry: 3000\nevent: hello\ndata: {}\n\n")
        now = [Event("device.shown", device_id, "") for device_id in shown]
        for chunk in await _messages(request, now, selector, search):
            await response.write(chunk)
        try:
            await _stream(request, response, subscription, selector, search)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            streams.discard(task)
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    subscription: Subscription,
    selector: selectors.Selector,
    search: str,
) -> None:
    while True:
        batch = await _next_batch(subscription)
        if not batch:
            await response.write(b": keepalive\n\n")
            continue
        for chunk in await _messages(request, batch, selector, search):
            await response.write(chunk)


async def _next_batch(subscription: Subscription) -> list[Event]:
    """The next event and whatever follows within ``BATCH_WAIT``; [] after ``KEEPALIVE``."""
    try:
        first = await asyncio.wait_for(subscription.get(), KEEPALIVE)
    except TimeoutError:
        return []
    batch = [first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_WAIT
    while len(batch) < BATCH_MAX and (left := deadline - loop.time()) > 0:
        try:
            batch.append(await asyncio.wait_for(subscription.get(), left))
        except TimeoutError:
            break
    return batch


def _message(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _messages(
    request: web.Request, batch: list[Event], selector: selectors.Selector, search: str
) -> list[bytes]:
    store = request.app[STORE]
    devices: dict[str, str] = {}  # id -> the last kind of event about it
    out: list[bytes] = []
    for event in batch:
        if event.kind.startswith("device.") or event.kind == "device":
            devices[event.target] = event.kind
        else:
            out.append(_message("change", {"kind": event.kind, "target": event.target}))
    for device_id, kind in devices.items():
        summary = await device_ops.summary(store, device_id)
        if summary is None:
            out.append(_message("device", {"id": device_id, "gone": True, "kind": kind}))
            continue
        term = search.lower()
        matches = selector.matches(summary.labels) and (
            not term or term in summary.id.lower() or term in summary.name.lower()
        )
        cells = status.cells(summary)
        out.append(_message("device", {**cells, "kind": kind, "matches": matches}))
    return out


async def close_streams(app: web.Application) -> None:
    """On shutdown: end every open stream now, rather than after the shutdown timeout."""
    streams: set[asyncio.Task[Any]] = app[STREAMS]
    for task in list(streams):
        task.cancel()
