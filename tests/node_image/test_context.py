"""run_reconcile and the context's progress reports and commands (no network here: the
downloader has its own tests against a real HTTPS mirror)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node_image.agent.context import ReconcileContext, Supersede, run_reconcile
from node_image.agent.state import StateDir
from node_image.commands import CommandFailed
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec


def make(tmp_path: Path) -> tuple[ReconcileContext, list[Condition]]:
    reports: list[Condition] = []

    async def report(condition: Condition) -> None:
        reports.append(condition)

    host = SimulatedHost(tmp_path / "dev")
    return ReconcileContext("k3s", host, StateDir(tmp_path / "state"), report=report), reports


async def test_progress_is_reported_in_steps_with_its_percentage(tmp_path: Path) -> None:
    ctx, reports = make(tmp_path)
    for tenth in range(0, 1001):
        await ctx.progress(tenth / 10, "Installing", "k3s v1.31.4+k3s1")
    percents = [c.message.split("%")[0] for c in reports]
    assert percents == [str(p) for p in range(0, 101, 5)]
    assert reports[-1] == Condition(
        type="k3s", status="Progressing", reason="Installing", message="100% k3s v1.31.4+k3s1"
    )
    await ctx.progress(None, "Waiting", "for the node to be Ready")
    assert reports[-1].message == "for the node to be Ready"


class Sleeper:
    name = "k3s"

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        await ctx.run(["sleep", "0.1"], time_limit=5)
        await asyncio.sleep(30)
        return Condition(type="k3s", status="Ready")


class Broken:
    name = "k3s"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        raise self.error


async def test_a_reconciler_past_its_time_limit_is_cancelled_and_reported(tmp_path: Path) -> None:
    ctx, _ = make(tmp_path)
    condition = await run_reconcile(Sleeper(), Spec(), ctx, time_limit=0.5)
    assert (condition.type, condition.status, condition.reason) == ("k3s", "Error", "TimedOut")
    assert "0.5s" in condition.message


async def test_a_bug_is_an_internal_error_even_a_timeout_error_of_its_own(tmp_path: Path) -> None:
    ctx, _ = make(tmp_path)
    condition = await run_reconcile(Broken(TimeoutError("socket")), Spec(), ctx, time_limit=30)
    assert (condition.reason, condition.message) == ("InternalError", "TimeoutError: socket")
    condition = await run_reconcile(Broken(KeyError("x")), Spec(), ctx)
    assert condition.reason == "InternalError" and "KeyError" in condition.message


async def test_commands_run_in_a_thread_and_raise_with_stderr(tmp_path: Path) -> None:
    ctx, _ = make(tmp_path)
    result = await ctx.run(["sh", "-c", "echo $INSTALL_K3S_VERSION"], {"INSTALL_K3S_VERSION": "v1"})
    assert result.stdout == b"v1\n"
    with pytest.raises(CommandFailed, match="exit code 2: no systemctl"):
        await ctx.run(["sh", "-c", "echo no systemctl >&2; exit 2"])


async def test_a_superseded_pass_finishes_its_critical_section_and_is_cancelled_after(
    tmp_path: Path,
) -> None:
    ctx, _ = make(tmp_path)
    inside, release = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def reconcile() -> None:
        async with ctx.critical():
            inside.set()
            await release.wait()
            await asyncio.sleep(0)  # an await after the supersede: still not cancelled
            steps.append("slot written and armed")
        await asyncio.sleep(0)
        steps.append("after the critical section")

    task = asyncio.create_task(reconcile())
    ctx.supersede.bind(task)
    await inside.wait()
    ctx.supersede.request()
    await asyncio.sleep(0.05)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and steps == ["slot written and armed"]


async def test_a_superseded_pass_outside_a_critical_section_is_cancelled_at_once(
    tmp_path: Path,
) -> None:
    supersede = Supersede()
    task = asyncio.create_task(asyncio.Event().wait())
    supersede.bind(task)
    await asyncio.sleep(0)
    supersede.request()
    with pytest.raises(asyncio.CancelledError):
        await task
