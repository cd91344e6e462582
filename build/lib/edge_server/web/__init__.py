"""The web dashboard: server-rendered pages (aiohttp-jinja2), a little JavaScript, live
updates over server-sent events. It calls the operations layer (``edge_server.ops``) and
the notifier's subscriptions, never the store or an API handler.

``setup(app)`` loads templates and static files (once, before the loop runs) and adds the
routes; ``render.html_errors`` is the middleware that answers errors outside ``/api``
with HTML pages.
"""

from __future__ import annotations

from aiohttp import web

from edge_server.web import devices, pages, render, signin, sse, tokens
from edge_server.web.session import SESSIONS, Sessions

html_errors = render.html_errors


def setup(app: web.Application) -> None:
    render.setup(app)
    app[SESSIONS] = Sessions()
    app[sse.STREAMS] = set()
    app.on_shutdown.append(sse.close_streams)
    app.router.add_get("/static/{name}", render.static)
    for table in (signin.routes, pages.routes, devices.routes, tokens.routes, sse.routes):
        app.add_routes(table)
