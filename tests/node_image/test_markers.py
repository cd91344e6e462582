"""Run-once and per-boot markers, across a simulated reboot and on the real machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_image.agent.markers import Frequency, Markers
from node_image.agent.state import StateDir
from node_image.boot import RebootRequested
from node_image.errors import AgentError
from node_image.host import LinuxHost, SimulatedHost


def markers_on(tmp_path: Path) -> tuple[SimulatedHost, Markers]:
    host = SimulatedHost(tmp_path / "dev")
    return host, Markers(StateDir(tmp_path / "state", fsync=False), host)


async def test_a_once_marker_survives_a_reboot_and_a_per_boot_marker_does_not(
    tmp_path: Path,
) -> None:
    host, markers = markers_on(tmp_path)
    calls: list[str] = []

    async def step(name: str) -> str:
        calls.append(name)
        return name

    assert await markers.run("stage-k3s", Frequency.ONCE, lambda: step("once")) == (True, "once")
    assert await markers.run("health", Frequency.PER_BOOT, lambda: step("boot")) == (True, "boot")
    assert await markers.run("stage-k3s", Frequency.ONCE, lambda: step("once")) == (False, None)
    assert await markers.run("health", Frequency.PER_BOOT, lambda: step("boot")) == (False, None)
    assert calls == ["once", "boot"]

    with pytest.raises(RebootRequested):
        await asyncio.to_thread(host.reboot)
    # The agent restarts: new objects on the same directories.
    markers = Markers(StateDir(tmp_path / "state", fsync=False), SimulatedHost(tmp_path / "dev"))
    assert await asyncio.to_thread(markers.done, "stage-k3s", Frequency.ONCE)
    assert not await asyncio.to_thread(markers.done, "health", Frequency.PER_BOOT)
    assert await markers.run("health", Frequency.PER_BOOT, lambda: step("boot")) == (True, "boot")
    assert calls == ["once", "boot", "boot"]


async def test_a_step_that_fails_leaves_no_marker(tmp_path: Path) -> None:
    _, markers = markers_on(tmp_path)

    async def broken() -> None:
        raise AgentError("install script failed")

    with pytest.raises(AgentError):
        await markers.run("install", Frequency.ONCE, broken)
    assert not await asyncio.to_thread(markers.done, "install", Frequency.ONCE)


def test_markers_are_written_atomically_and_can_be_cleared(tmp_path: Path) -> None:
    _, markers = markers_on(tmp_path)
    markers.mark("a", Frequency.ONCE)
    assert [p.name for p in (markers.root / "once").iterdir()] == ["a"]  # no temp left
    assert markers.clear("a", Frequency.ONCE) is True
    assert markers.clear("a", Frequency.ONCE) is False
    assert not markers.done("a", Frequency.ONCE)
    for bad in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(AgentError, match="marker name"):
            markers.mark(bad, Frequency.ONCE)


def test_linux_host_per_boot_markers_follow_the_kernels_boot_id(tmp_path: Path) -> None:
    host = LinuxHost()
    assert host.boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    markers = Markers(StateDir(tmp_path / "state"), host)
    markers.mark("checked", Frequency.PER_BOOT)
    assert markers.done("checked", Frequency.PER_BOOT)
    # A marker from another boot does not count.
    path = markers.path("checked", Frequency.PER_BOOT)
    path.write_text('{"at": 0, "boot_id": "00000000-0000-0000-0000-000000000000"}')
    assert not markers.done("checked", Frequency.PER_BOOT)
