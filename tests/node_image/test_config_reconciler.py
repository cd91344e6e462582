"""The ``config`` reconciler on a simulated device: real files, real state directory.

The tests run in an event loop that fails any blocking call from our packages, so the
reconciler is checked for that too; the tests' own setup goes through ``to_thread``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers import ConfigReconciler, Reconciler
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.desired import ConfigFile, Spec


@pytest.fixture
def host(tmp_path: Path) -> SimulatedHost:
    return SimulatedHost(tmp_path / "device")


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state", fsync=False)


def spec(*files: ConfigFile) -> Spec:
    return Spec(config=list(files))


APP = ConfigFile(path="/etc/app/app.conf", mode=0o640, content="level=info\n")
TOOL = ConfigFile(path="/usr/local/bin/tool", mode=0o755, content="#!/bin/sh\necho hi\n")
SECRET = ConfigFile(path="/etc/app/secret", mode=0o600, content="s3cret")


def ctx(host: SimulatedHost, state: StateDir) -> ReconcileContext:
    return ReconcileContext("config", host, state)


def on_disk(host: SimulatedHost, path: str) -> Path:
    return host.rootfs / path.lstrip("/")


async def test_writes_each_file_with_its_mode(host: SimulatedHost, state: StateDir) -> None:
    reconciler = ConfigReconciler(state)
    assert isinstance(reconciler, Reconciler) and reconciler.name == "config"
    condition = await reconciler.reconcile(spec(APP, TOOL, SECRET), ctx(host, state))
    assert (condition.type, condition.status, condition.message) == (
        "config",
        "Applied",
        "3 file(s)",
    )
    for wanted in (APP, TOOL, SECRET):
        path = on_disk(host, wanted.path)
        assert path.read_text() == wanted.content
        assert path.stat().st_mode & 0o7777 == wanted.mode
    assert await asyncio.to_thread(reconciler.managed) == {APP.path, TOOL.path, SECRET.path}


async def test_a_second_run_changes_nothing(host: SimulatedHost, state: StateDir) -> None:
    reconciler = ConfigReconciler(state)
    condition = await reconciler.reconcile(spec(APP, TOOL), ctx(host, state))
    before = {p: on_disk(host, p).stat() for p in (APP.path, TOOL.path)}
    again = await reconciler.reconcile(spec(APP, TOOL), ctx(host, state))
    assert again == condition  # the same state reports the same condition
    for p, st in before.items():
        now = on_disk(host, p).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


async def test_a_changed_mode_or_content_is_rewritten(host: SimulatedHost, state: StateDir) -> None:
    reconciler = ConfigReconciler(state)
    await reconciler.reconcile(spec(APP), ctx(host, state))
    await reconciler.reconcile(spec(APP.model_copy(update={"mode": 0o600})), ctx(host, state))
    assert on_disk(host, APP.path).stat().st_mode & 0o7777 == 0o600
    # Drift: someone edits the file by hand; the next run puts it back.
    on_disk(host, APP.path).write_text("tampered")
    condition = await reconciler.reconcile(spec(APP), ctx(host, state))
    assert condition.status == "Applied"
    assert on_disk(host, APP.path).read_text() == APP.content


async def test_removes_files_it_wrote_that_are_no_longer_wanted_and_never_foreign_ones(
    host: SimulatedHost, state: StateDir
) -> None:
    await asyncio.to_thread(
        host.write_file, "/etc/app/local.conf", b"the operator's own file", 0o644
    )
    await asyncio.to_thread(host.write_file, "/etc/hosts", b"127.0.0.1 localhost\n", 0o644)
    await ConfigReconciler(state).reconcile(spec(APP, SECRET, TOOL), ctx(host, state))

    # A new instance (an agent restart) knows what the previous one wrote.
    restarted = ConfigReconciler(state)
    condition = await restarted.reconcile(spec(APP), ctx(host, state))
    assert (condition.status, condition.message) == ("Applied", "1 file(s)")
    assert on_disk(host, APP.path).exists()
    assert not on_disk(host, SECRET.path).exists()
    assert not on_disk(host, TOOL.path).exists()
    assert on_disk(host, "/etc/app/local.conf").read_bytes() == b"the operator's own file"
    assert on_disk(host, "/etc/hosts").exists()
    assert await asyncio.to_thread(restarted.managed) == {APP.path}

    condition = await restarted.reconcile(spec(), ctx(host, state))
    assert (condition.status, condition.message) == ("Applied", "0 file(s)")
    assert not on_disk(host, APP.path).exists()
    assert on_disk(host, "/etc/app/local.conf").exists()
    assert await asyncio.to_thread(restarted.managed) == set()


async def test_a_bad_target_is_an_error_condition_and_the_rest_still_applies(
    host: SimulatedHost, state: StateDir
) -> None:
    await asyncio.to_thread(
        host.write_file, "/etc/blocker", b"a regular file, not a directory", 0o644
    )
    bad = ConfigFile(path="/etc/blocker/app.conf", content="x")
    reconciler = ConfigReconciler(state)
    condition = await reconciler.reconcile(spec(APP, bad), ctx(host, state))
    assert (condition.type, condition.status, condition.reason) == ("config", "Error", "BadPath")
    assert "/etc/blocker/app.conf" in condition.message
    assert str(host.rootfs) not in condition.message  # device paths only, not the host's
    assert on_disk(host, APP.path).read_text() == APP.content
    assert on_disk(host, "/etc/blocker").read_bytes() == b"a regular file, not a directory"
    assert await asyncio.to_thread(reconciler.managed) == {APP.path}

    # The spec is fixed: the next run is clean.
    condition = await reconciler.reconcile(spec(APP), ctx(host, state))
    assert condition.status == "Applied"


async def test_a_directory_in_the_way_is_an_error_not_a_crash(
    host: SimulatedHost, state: StateDir
) -> None:
    await asyncio.to_thread(host.write_file, "/etc/app.d/inner", b"", 0o644)
    condition = await ConfigReconciler(state).reconcile(
        spec(ConfigFile(path="/etc/app.d", content="x")), ctx(host, state)
    )
    assert condition.status == "Error" and condition.reason == "BadPath"
    assert on_disk(host, "/etc/app.d/inner").exists()
