"""Groups: a label selector, a priority and a spec patch. Every change recomputes the specs
of the whole fleet in the same writer job, and nudges the devices whose generation rose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import Field
from sqlite_utils import Database

from edge_server import selectors, specs
from edge_server.errors import Conflict, NotFound
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.ops.rows import Row, SpecPatchJson
from edge_server.store import Store
from edge_server.store import groups as groups_store
from edge_server.store.rows import audit
from registration import document as doc
from registration.desired import SpecPatch
from registration.protocol import GROUP_NAME_PATTERN, Document

R = TypeVar("R", bound=Row)

NAME = GROUP_NAME_PATTERN


class GroupCreate(Document):
    name: str = doc.Field(pattern=NAME)
    selector: str = doc.Field(default="", max_length=1024)
    priority: int = doc.Field(default=0, ge=-1000, le=1000)
    spec: SpecPatch = doc.Field(default_factory=SpecPatch)


class GroupUpdate(Document):
    selector: str | None = doc.Field(default=None, max_length=1024)
    priority: int | None = doc.Field(default=None, ge=-1000, le=1000)
    spec: SpecPatch | None = None


class GroupRow(Row):
    name: str
    selector: str
    priority: int
    spec: SpecPatchJson
    created_at: float
    updated_at: float


class GroupList(Row):
    items: list[GroupRow]


class GroupChanged(GroupRow):
    devices_changed: int = Field(description="devices whose generation rose")


class GroupDeleted(Row):
    name: str
    status: Literal["deleted"]
    devices_changed: int


async def create(store: Store, actor: Actor, body: GroupCreate) -> Done[GroupChanged]:
    selector = str(selectors.parse(body.selector))

    def job(db: Database) -> dict[str, Any]:
        if groups_store.get(db, body.name) is not None:
            raise Conflict(f"group {body.name} exists", code="group_exists")
        groups_store.create(db, body.name, selector, body.priority)
        groups_store.update(db, body.name, spec=body.spec.model_dump(exclude_none=True))
        audit(db, actor.name, "group.create", body.name, selector=selector)
        return _get(db, body.name)

    return await _recompute_after(store, actor, "group.create", body.name, job, GroupChanged)


async def update(store: Store, actor: Actor, name: str, body: GroupUpdate) -> Done[GroupChanged]:
    selector = str(selectors.parse(body.selector)) if body.selector is not None else None
    spec = body.spec.model_dump(exclude_none=True) if body.spec is not None else None

    def job(db: Database) -> dict[str, Any]:
        if not groups_store.update(db, name, selector=selector, priority=body.priority, spec=spec):
            raise NotFound(f"no group {name}")
        audit(db, actor.name, "group.update", name, **body.model_dump(exclude_none=True))
        return _get(db, name)

    return await _recompute_after(store, actor, "group.update", name, job, GroupChanged)


async def delete(store: Store, actor: Actor, name: str) -> Done[GroupDeleted]:
    def job(db: Database) -> dict[str, Any]:
        if not groups_store.delete(db, name):
            raise NotFound(f"no group {name}")
        audit(db, actor.name, "group.delete", name)
        return {"name": name, "status": "deleted"}

    return await _recompute_after(store, actor, "group.delete", name, job, GroupDeleted)


async def list_all(store: Store) -> GroupList:
    rows = await store.read(groups_store.list_all)
    return GroupList(items=[GroupRow.model_validate(r) for r in rows])


async def show(store: Store, name: str) -> GroupRow:
    row = await store.read(lambda db: groups_store.get(db, name))
    if row is None:
        raise NotFound(f"no group {name}")
    return GroupRow.model_validate(row)


def _get(db: Database, name: str) -> dict[str, Any]:
    row = groups_store.get(db, name)
    assert row is not None  # noqa: S101 - read inside the job that wrote it
    return row


async def _recompute_after(
    store: Store,
    actor: Actor,
    kind: str,
    name: str,
    job: Callable[[Database], dict[str, Any]],
    result: type[R],
) -> Done[R]:
    """The group change and the recomputation of every device's spec, in one writer job."""

    def write(db: Database) -> tuple[dict[str, Any], list[specs.Change]]:
        row = job(db)
        return row, specs.recompute(db)

    row, nudges = await store.write(write)
    value = result.model_validate({**row, "devices_changed": len(nudges)})
    return Done(value, Changes.of(Event(kind, name, actor.name), nudges=nudges))
