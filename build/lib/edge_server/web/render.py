"""Templates and static files, both read once when the app is built (never on the event
loop), and the HTML error pages of everything outside ``/api``."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from edge_server.errors import ServerError
from edge_server.web.session import SESSION_KEY, signed_in

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Asset:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.content_type = TYPES.get(path.suffix, "application/octet-stream")
        self.version = hashlib.sha256(self.body).hexdigest()[:10]


ASSETS = web.AppKey("web_assets", dict)


def relative(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "never"
    seconds = int((now or time.time()) - at)
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago" if seconds >= 5 else "just now"


def iso(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else ""


def setup(app: web.Application) -> None:
    """Load every template and asset now, synchronously, before the loop runs."""
    sources = {p.name: p.read_text() for p in TEMPLATES.glob("*.html")}
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    assets = {p.name: Asset(p) for p in STATIC.iterdir() if p.suffix in TYPES}
    app[ASSETS] = assets
    env.globals["static"] = lambda name: f"/static/{name}?v={assets[name].version}"
    env.filters["relative"] = relative
    env.filters["iso"] = iso
    for name in sources:  # compile now: a template error stops the start, not a page
        env.get_template(name)


async def static(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    session = request.get(SESSION_KEY) or signed_in(request)
    response = aiohttp_jinja2.render_template(
        template,
        request,
        {"session": session, "path": request.path, **context},
        status=status,
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path == "/healthz"


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors outside ``/api`` become HTML pages; ``/api`` keeps its JSON (the outer
    middleware, ``api.middleware.errors``)."""
    if is_api(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except ServerError as e:
        return _error_page(request, e.status, e.detail)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error_page(request, e.status, e.reason)
    except Exception:  # logged with its traceback; the operator sees a page, not JSON
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_page(request, 500, "An internal error; the server log has the details.")


TITLES = {403: "Not allowed", 404: "Not found", 429: "Slow down"}


def _error_page(request: web.Request, status: int, detail: str) -> web.Response:
    title = TITLES.get(status, "Something went wrong")
    return render(request, "error.html", {"title": title, "detail": detail}, status=status)
