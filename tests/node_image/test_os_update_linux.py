"""The OS update on ``LinuxHost`` against a real disk layout: a GPT image whose EFI, state
and persistent partitions are attached with ``losetup --offset/--sizelimit``; slots and
grubenv on the ext4 state partition. The agent runs in its own process; a reboot is the
GRUB decision (``boot.choose_slot`` on the real grubenv, through ``grub-editenv``) and the
agent started again. The power-loss test kills the agent with SIGKILL at every step."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers.os_update import CRASH_POINTS, HealthSettings, OsUpdateReconciler
from node_image.agent.state import StateDir
from node_image.boot import RebootRequested
from node_image.host import LinuxHost
from registration.desired import Condition, Spec
from tests.node_image.gpt_disk import sha256, squashfs
from tests.node_image.os_rig import FAILING, HEALTHY, Rig, rig

pytestmark = pytest.mark.timeout(300)


def _image(r: Rig, version: str, check: str) -> Path:
    built = squashfs(r.images.parent, version, check)
    target = r.images / built.name
    target.write_bytes(built.read_bytes())
    return target


def _grubenv(r: Rig) -> dict[str, str]:
    return r.machine.env()


def test_an_update_goes_from_a_to_b_and_reports_healthy(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        assert set(r.disk.partitions) == {"EFI", "corral-state", "corral-persistent"}
        image = _image(r, "2.0", HEALTHY)
        spec = r.spec(r.ref(image, "2.0"), "2.0")
        os_condition = r.converge(spec)
        assert (os_condition["status"], os_condition["message"]) == ("Healthy", "os 2.0 on slot B")
        assert r.machine.booted() == "B"
        assert _grubenv(r) == {"corral_slot": "B"}
        assert sha256(r.disk.layout.slot("B"), image.stat().st_size) == sha256(image)
        # Idempotent: the next pass changes nothing and reboots nothing.
        assert r.os_of(r.agent(spec)[1])["status"] == "Healthy"
        assert r.machine.booted() == "B"


def test_a_failing_health_check_rolls_back_to_a_and_reports_rolled_back(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        v1 = sha256(r.disk.layout.slot("A"))
        image = _image(r, "2.0", FAILING)
        spec = r.spec(r.ref(image, "2.0"), "2.0")
        os_condition = r.converge(spec)
        assert (os_condition["status"], os_condition["reason"]) == (
            "RolledBack",
            "HealthCheckFailed",
        )
        assert "kiosk.service did not start" in os_condition["message"]
        assert r.machine.booted() == "A"
        assert _grubenv(r) == {"corral_slot": "A"}
        assert sha256(r.disk.layout.slot("A")) == v1
        # The failed image is not tried again while the spec names it.
        again = r.os_of(r.agent(spec)[1])
        assert again["status"] == "RolledBack" and r.machine.booted() == "A"


def test_a_new_slot_that_never_comes_up_uses_its_tries_and_rolls_back(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        image = _image(r, "2.0", HEALTHY)
        spec = r.spec(r.ref(image, "2.0"), "2.0")
        code, answer = r.agent(spec)
        assert code == 0 and answer["rebooting"]
        # The new kernel hangs before the agent starts, three times: GRUB takes each try.
        assert [r.machine.power_on() for _ in range(4)] == ["B", "B", "B", "A"]
        os_condition = r.converge(spec)
        assert (os_condition["status"], os_condition["reason"]) == ("RolledBack", "BootFailed")
        assert _grubenv(r) == {"corral_slot": "A"}


@pytest.mark.parametrize(
    ("point", "check"),
    [(p, HEALTHY) for p in CRASH_POINTS if p != "os:rollback"]
    + [("os:health-check", FAILING), ("os:rollback", FAILING)],
)
def test_power_loss_at_every_step_leaves_a_bootable_slot_and_the_update_finishes(
    tmp_path: Path, point: str, check: str
) -> None:
    with rig(tmp_path) as r:
        image = _image(r, "2.0", check)
        spec = r.spec(r.ref(image, "2.0"), "2.0")
        os_condition = r.converge(spec, crash_at=point)
        assert any("crash point " + point in run for run in r.runs), "the point was reached"
        if check == HEALTHY:
            assert os_condition["status"] == "Healthy", r.runs
            assert (r.machine.booted(), _grubenv(r)) == ("B", {"corral_slot": "B"})
        else:
            assert os_condition["status"] == "RolledBack", r.runs
            assert (r.machine.booted(), _grubenv(r)) == ("A", {"corral_slot": "A"})
        r.assert_bootable()


async def _update_in_process(r: Rig, spec: Spec, health: HealthSettings) -> Condition:
    """The reconciler in this process on LinuxHost; each reboot is a power-on of the rig."""
    state = StateDir(r.state)
    reconciler = OsUpdateReconciler(state, health)
    for _ in range(6):
        host = LinuxHost(r.disk.layout, r.machine.kernel)
        ctx = ReconcileContext("os", host, state)
        try:
            return await reconciler.reconcile(spec, ctx)
        except RebootRequested:
            await asyncio.to_thread(r.machine.power_on)
    raise AssertionError("the update did not settle")


@pytest.mark.parametrize(("node", "outcome"), [("Ready", "Healthy"), ("NotReady", "RolledBack")])
async def test_when_k3s_is_wanted_its_node_must_be_ready_after_the_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str, outcome: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    k3s = bin_dir / "k3s"  # a stand-in: what `k3s kubectl get nodes --no-headers` prints
    k3s.write_text(
        f'#!/bin/sh\necho "edge-1   {node}   control-plane,master   5m   v1.31.4+k3s1"\n'
    )
    k3s.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with rig(tmp_path) as r:
        image = await asyncio.to_thread(_image, r, "2.0", HEALTHY)
        spec = Spec.model_validate(
            {
                "os": {"version": "2.0", "image": r.ref(image, "2.0")},
                "k3s": {"version": "v1.31.4+k3s1"},
            }
        )
        health = HealthSettings(k3s_timeout=1.0, poll=0.2)
        condition = await _update_in_process(r, spec, health)
        assert condition.status == outcome
        if outcome == "RolledBack":
            assert "the K3s node is not Ready: edge-1   NotReady" in condition.message
        assert r.machine.booted() == ("B" if outcome == "Healthy" else "A")


def test_a_spec_that_moves_on_before_the_reboot_drops_the_update_and_keeps_a(
    tmp_path: Path,
) -> None:
    with rig(tmp_path) as r:
        image = _image(r, "2.0", HEALTHY)
        code, _ = r.agent(r.spec(r.ref(image, "2.0"), "2.0"), crash_at="os:reboot")
        assert code == -9 and _grubenv(r)["corral_next"] == "B"  # armed, then the power went
        # Before the agent is back, the operator takes the update away.
        code, answer = r.agent(r.spec(None, "1.0"))
        assert code == 0 and r.os_of(answer)["reason"] == "NoImage"
        assert _grubenv(r) == {"corral_slot": "A"}
        assert r.machine.power_on() == "A"
