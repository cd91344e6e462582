"""The spec cache follows the groups' version counter, not the clock or the rows' sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlite_utils import Database

from edge_server import specs
from edge_server.errors import Conflict
from edge_server.store import Store, connect
from edge_server.store import groups as groups_store
from edge_server.store.migrations import migrate
from registration.desired import OsSpec, SpecPatch
from tests.edge_server.test_specs import add_device, set_group


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = connect(tmp_path / "c.db")
    migrate(database)
    return database


def os_version(db: Database, device_id: str) -> str:
    (spec,) = db.execute(
        "SELECT spec FROM device_state WHERE device_id = ?", (device_id,)
    ).fetchone()
    return str(json.loads(spec)["os"]["version"])


def os_patch(version: str) -> SpecPatch:
    return SpecPatch(os=OsSpec(version=version))


def test_a_same_size_edit_at_the_same_clock_reading_reaches_the_spec(db: Database) -> None:
    add_device(db, "d1", {"site": "eu"})
    set_group(db, "eu", "site=eu", 0, os_patch("1.0"))
    specs.recompute(db)
    assert os_version(db, "d1") == "1.0"
    before = groups_store.version(db)
    (stamp,) = db.execute("SELECT updated_at FROM groups WHERE name = 'eu'").fetchone()

    set_group(db, "eu", "site=eu", 0, os_patch("2.0"))  # same length as "1.0"
    # The clock stepped back: this edit carries the same time as the one before.
    db.execute("UPDATE groups SET updated_at = ? WHERE name = 'eu'", (stamp,))

    assert [c.device_id for c in specs.recompute(db)] == ["d1"]
    assert os_version(db, "d1") == "2.0"
    assert groups_store.version(db)[0] > before[0]


def test_every_group_write_bumps_the_version(db: Database) -> None:
    seen = [groups_store.version(db)[0]]
    groups_store.create(db, "a", "", 0)
    seen.append(groups_store.version(db)[0])
    groups_store.update(db, "a", priority=0)  # changes nothing but is a write
    seen.append(groups_store.version(db)[0])
    groups_store.delete(db, "a")
    seen.append(groups_store.version(db)[0])
    assert seen == sorted(set(seen)), seen


async def test_a_rolled_back_group_edit_leaves_no_stale_spec(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    await store.start()
    try:

        def setup(db: Database) -> None:
            add_device(db, "d1", {"site": "eu"})
            set_group(db, "eu", "site=eu", 0, os_patch("1.0"))
            specs.recompute(db)

        def edit_then_fail(db: Database) -> None:
            set_group(db, "eu", "site=eu", 0, os_patch("3.0"))
            specs.recompute(db)  # the writer's cache now holds "3.0" at the next number
            raise Conflict("changed my mind")

        def edit(db: Database) -> list[specs.Change]:
            set_group(db, "eu", "site=eu", 0, os_patch("2.0"))  # the same number, reused
            return specs.recompute(db)

        await store.write(setup)
        with pytest.raises(Conflict):
            await store.write(edit_then_fail)
        changes = await store.write(edit)
        assert [c.device_id for c in changes] == ["d1"]
        assert await store.read(lambda db: os_version(db, "d1")) == "2.0"
    finally:
        await store.close()
