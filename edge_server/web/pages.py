"""The overview, groups and artifacts pages."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from edge_server import selectors
from edge_server.errors import Conflict
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import artifacts as artifact_ops
from edge_server.ops import devices as device_ops
from edge_server.ops import groups as group_ops
from edge_server.ops import overview as overview_ops
from edge_server.web.forms import FormError, selector, validation, whole
from edge_server.web.render import render
from edge_server.web.session import current, page
from registration.document import ValidationError

routes = web.RouteTableDef()


@routes.get("/")
@page
async def overview(request: web.Request) -> web.Response:
    seen = await overview_ops.overview(request.app[STORE])
    return render(request, "overview.html", {"title": "Overview", "o": seen})


def _spec_summary(spec: dict[str, object]) -> list[str]:
    parts: list[str] = []
    os_spec = spec.get("os")
    if isinstance(os_spec, dict) and os_spec.get("version"):
        parts.append(f"OS {os_spec['version']}")
    k3s = spec.get("k3s")
    if isinstance(k3s, dict) and k3s.get("version"):
        parts.append(f"K3s {k3s['version']}")
    for key, what in (("config", "config file"), ("bundles", "bundle")):
        items = spec.get(key)
        if isinstance(items, list) and items:
            parts.append(f"{len(items)} {what}{'s' if len(items) != 1 else ''}")
    return parts


async def _groups_page(
    request: web.Request, error: FormError | None = None, form: dict[str, str] | None = None
) -> web.Response:
    store = request.app[STORE]
    rows = []
    for g in (await group_ops.list_all(store)).items:
        selected = await device_ops.list_page(store, selectors.parse(g.selector), 1, None)
        rows.append(
            {
                "g": g,
                "spec": _spec_summary(g.spec),
                "devices": selected.total,
                "devices_url": "/devices?" + urlencode({"selector": g.selector}),
            }
        )
    return render(
        request,
        "groups.html",
        {
            "title": "Groups",
            "groups": rows,
            "error": error,
            "form": form or {"name": "", "selector": "", "priority": "0"},
        },
        status=400 if error else 200,
    )


@routes.get("/groups")
@page
async def groups(request: web.Request) -> web.Response:
    return await _groups_page(request)


@routes.post("/groups")
@page
async def create_group(request: web.Request) -> web.StreamResponse:
    posted = await request.post()
    form = {k: str(posted.get(k, "")) for k in ("name", "selector", "priority")}
    app = request.app
    try:
        text = selector("selector", form["selector"])
        priority = whole("priority", form["priority"], -1000, 1000, 0)
        try:
            body = group_ops.GroupCreate(name=form["name"], selector=text, priority=priority or 0)
        except ValidationError as e:
            raise validation("name", e) from e
        try:
            await app[NOTIFIER].run(group_ops.create(app[STORE], current(request).actor, body))
        except Conflict as e:
            raise FormError("name", e.detail) from e
    except FormError as e:
        return await _groups_page(request, e, form)
    raise web.HTTPSeeOther("/groups")


@routes.get("/artifacts")
@page
async def artifacts(request: web.Request) -> web.Response:
    items = (await artifact_ops.list_all(request.app[STORE])).items
    return render(request, "artifacts.html", {"title": "Artifacts", "items": items})
