"""Groups: a label selector, a priority and a spec patch. Every change recomputes specs."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field
from sqlite_utils import Database

from edge_server import selectors, specs
from edge_server.api.http import SPEC_BODY_BYTES, json_response, read_model
from edge_server.auth import current_operator, operator
from edge_server.errors import Conflict, NotFound
from edge_server.keys import CHANNEL, STORE
from edge_server.store import groups as groups_store
from edge_server.store.rows import audit
from registration.desired import SpecPatch
from registration.protocol import GROUP_NAME_PATTERN, Document

routes = web.RouteTableDef()

NAME = GROUP_NAME_PATTERN


class GroupCreate(Document):
    name: str = Field(pattern=NAME)
    selector: str = Field(default="", max_length=1024)
    priority: int = Field(default=0, ge=-1000, le=1000)
    spec: SpecPatch = Field(default_factory=SpecPatch)


class GroupUpdate(Document):
    selector: str | None = Field(default=None, max_length=1024)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    spec: SpecPatch | None = None


async def _write_and_nudge(request: web.Request, job: Any) -> dict[str, Any]:
    """Run a group change and the recomputation of every device's spec in one transaction,
    then nudge the devices whose generation rose."""

    def write(db: Database) -> tuple[dict[str, Any] | None, list[specs.Change]]:
        row = job(db)
        if row is None:
            return None, []
        return row, specs.recompute(db)

    row, changes = await request.app[STORE].write(write)
    if row is None:
        raise NotFound(f"no group {request.match_info.get('name', '')}")
    await request.app[CHANNEL].nudge(changes)
    return {**row, "devices_changed": len(changes)}


@routes.post("/api/v1/groups")
@operator("operator")
async def create_group(request: web.Request) -> web.Response:
    body = await read_model(request, GroupCreate, SPEC_BODY_BYTES)
    selector = str(selectors.parse(body.selector))
    who = current_operator(request)

    def job(db: Database) -> dict[str, Any] | None:
        if groups_store.get(db, body.name) is not None:
            raise Conflict(f"group {body.name} exists", code="group_exists")
        groups_store.create(db, body.name, selector, body.priority)
        groups_store.update(db, body.name, spec=body.spec.model_dump(exclude_none=True))
        audit(db, who.username, "group.create", body.name, selector=selector)
        return groups_store.get(db, body.name)

    return json_response(await _write_and_nudge(request, job), status=201)


@routes.get("/api/v1/groups")
@operator("viewer")
async def list_groups(request: web.Request) -> web.Response:
    return json_response({"items": await request.app[STORE].read(groups_store.list_all)})


@routes.get("/api/v1/groups/{name}")
@operator("viewer")
async def show_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    row = await request.app[STORE].read(lambda db: groups_store.get(db, name))
    if row is None:
        raise NotFound(f"no group {name}")
    return json_response(row)


@routes.patch("/api/v1/groups/{name}")
@operator("operator")
async def update_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_model(request, GroupUpdate, SPEC_BODY_BYTES)
    selector = str(selectors.parse(body.selector)) if body.selector is not None else None
    who = current_operator(request)

    def job(db: Database) -> dict[str, Any] | None:
        spec = body.spec.model_dump(exclude_none=True) if body.spec is not None else None
        if not groups_store.update(db, name, selector=selector, priority=body.priority, spec=spec):
            return None
        audit(db, who.username, "group.update", name, **body.model_dump(exclude_none=True))
        return groups_store.get(db, name)

    return json_response(await _write_and_nudge(request, job))


@routes.delete("/api/v1/groups/{name}")
@operator("operator")
async def delete_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    who = current_operator(request)

    def job(db: Database) -> dict[str, Any] | None:
        if not groups_store.delete(db, name):
            return None
        audit(db, who.username, "group.delete", name)
        return {"name": name, "status": "deleted"}

    return json_response(await _write_and_nudge(request, job))
