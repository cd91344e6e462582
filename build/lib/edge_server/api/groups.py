"""Groups: a label selector, a priority and a spec patch (``ops.groups``)."""

from __future__ import annotations

from aiohttp import web

from edge_server.api.http import SPEC_BODY_BYTES, json_response, read_model
from edge_server.auth import current_actor, operator
from edge_server.keys import NOTIFIER, STORE
from edge_server.ops import groups as group_ops
from edge_server.ops.groups import GroupCreate, GroupUpdate

__all__ = ["GroupCreate", "GroupUpdate", "routes"]

routes = web.RouteTableDef()


@routes.post("/api/v1/groups")
@operator("operator")
async def create_group(request: web.Request) -> web.Response:
    body = await read_model(request, GroupCreate, SPEC_BODY_BYTES)
    app = request.app
    row = await app[NOTIFIER].run(group_ops.create(app[STORE], current_actor(request), body))
    return json_response(row, status=201)


@routes.get("/api/v1/groups")
@operator("viewer")
async def list_groups(request: web.Request) -> web.Response:
    return json_response(await group_ops.list_all(request.app[STORE]))


@routes.get("/api/v1/groups/{name}")
@operator("viewer")
async def show_group(request: web.Request) -> web.Response:
    return json_response(await group_ops.show(request.app[STORE], request.match_info["name"]))


@routes.patch("/api/v1/groups/{name}")
@operator("operator")
async def update_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_model(request, GroupUpdate, SPEC_BODY_BYTES)
    app = request.app
    row = await app[NOTIFIER].run(group_ops.update(app[STORE], current_actor(request), name, body))
    return json_response(row)


@routes.delete("/api/v1/groups/{name}")
@operator("operator")
async def delete_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    app = request.app
    done = await app[NOTIFIER].run(group_ops.delete(app[STORE], current_actor(request), name))
    return json_response(done)
