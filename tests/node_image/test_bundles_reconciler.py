"""The ``bundles`` reconciler on a simulated device: real files, real state directory, and
the stand-in ``k3s`` (``tests/fixtures/k3s/k3s``) run through ``Host.run``, which records
every ``kubectl`` call in the device's ``/var/log/k3s-kubectl.log``.

The tests run in an event loop that fails any blocking call from our packages.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers import REGISTRY, BundlesReconciler, Reconciler, build
from node_image.agent.reconcilers.bundles import K3S_BINARY, MANIFESTS
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.desired import Bundle, Condition, K3sSpec, Spec
from tests.support import REPO

STANDIN = REPO / "tests" / "fixtures" / "k3s" / "k3s"
KUBECTL_LOG = "/var/log/k3s-kubectl.log"

WEB = Bundle(name="web", content="apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n")
CHART = Bundle(
    name="grafana",
    content="apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata:\n  name: grafana\n"
    "  namespace: kube-system\nspec:\n  chart: grafana\n",
)


@pytest.fixture
def host(tmp_path: Path) -> SimulatedHost:
    host = SimulatedHost(tmp_path / "device")
    binary = host.rootfs / K3S_BINARY.lstrip("/")
    binary.parent.mkdir(parents=True)
    shutil.copy(STANDIN, binary)
    return host


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state", fsync=False)


def server(*bundles: Bundle) -> Spec:
    return Spec(k3s=K3sSpec(role="server"), bundles=list(bundles))


def on_disk(host: SimulatedHost, path: str) -> Path:
    return host.rootfs / path.lstrip("/")


def manifest(host: SimulatedHost, name: str) -> Path:
    return on_disk(host, f"{MANIFESTS}/{name}.yaml")


def kubectl_calls(host: SimulatedHost) -> list[str]:
    log = on_disk(host, KUBECTL_LOG)
    return log.read_text().splitlines() if log.exists() else []


class Reports:
    """A report sink: what the reconciler says before its pass ends."""

    def __init__(self) -> None:
        self.conditions: list[Condition] = []

    async def __call__(self, condition: Condition) -> None:
        self.conditions.append(condition)


def ctx(host: SimulatedHost, state: StateDir, reports: Reports | None = None) -> ReconcileContext:
    return ReconcileContext("bundles", host, state, report=reports)


def test_bundles_run_after_k3s_in_the_registry(state: StateDir) -> None:
    names = [reconciler.name for reconciler in build(state, REGISTRY)]
    assert names.index("bundles") > names.index("k3s")


async def test_on_the_server_node_each_bundle_is_written_to_the_manifests_dir(
    host: SimulatedHost, state: StateDir
) -> None:
    reconciler = BundlesReconciler(state)
    assert isinstance(reconciler, Reconciler) and reconciler.name == "bundles"
    condition = await reconciler.reconcile(server(WEB, CHART), ctx(host, state))
    assert (condition.type, condition.status, condition.message) == (
        "bundles",
        "Applied",
        "2 bundle(s)",
    )
    assert manifest(host, "web").read_text() == WEB.content
    assert manifest(host, "grafana").read_text() == CHART.content
    assert set(await asyncio.to_thread(reconciler.managed)) == {
        f"{MANIFESTS}/web.yaml",
        f"{MANIFESTS}/grafana.yaml",
    }
    # Idempotent: a second pass rewrites nothing and reports the same.
    before = manifest(host, "web").stat()
    assert await reconciler.reconcile(server(WEB, CHART), ctx(host, state)) == condition
    after = manifest(host, "web").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert kubectl_calls(host) == []


async def test_a_removed_bundle_is_deleted_with_kubectl_then_its_file_goes(
    host: SimulatedHost, state: StateDir
) -> None:
    await asyncio.to_thread(
        host.write_file, f"{MANIFESTS}/coredns.yaml", b"K3s's own manifest", 0o600
    )
    await BundlesReconciler(state).reconcile(server(WEB, CHART), ctx(host, state))
    web = str(manifest(host, "web"))

    # A new instance (an agent restart) knows what the previous one wrote.
    restarted = BundlesReconciler(state)
    condition = await restarted.reconcile(server(CHART), ctx(host, state))
    assert (condition.status, condition.message) == ("Applied", "1 bundle(s)")
    assert kubectl_calls(host) == [f"delete --ignore-not-found -f {web}"]
    assert not manifest(host, "web").exists()
    assert manifest(host, "grafana").exists()
    assert manifest(host, "coredns").read_bytes() == b"K3s's own manifest"  # never ours
    assert set(await asyncio.to_thread(restarted.managed)) == {f"{MANIFESTS}/grafana.yaml"}


async def test_a_hand_edit_is_reported_modified_then_repaired(
    host: SimulatedHost, state: StateDir
) -> None:
    reconciler = BundlesReconciler(state)
    await reconciler.reconcile(server(WEB, CHART), ctx(host, state))
    manifest(host, "web").write_text(WEB.content + "  labels: {edited: by-hand}\n")

    reports = Reports()
    condition = await reconciler.reconcile(server(WEB, CHART), ctx(host, state, reports))
    assert [(c.type, c.status, c.reason) for c in reports.conditions] == [
        ("bundles", "Modified", "Drift")
    ]
    assert "web.yaml" in reports.conditions[0].message
    assert "grafana" not in reports.conditions[0].message
    assert condition.status == "Applied"
    assert manifest(host, "web").read_text() == WEB.content

    # A manifest removed by hand is drift too: reported, and written again.
    manifest(host, "grafana").unlink()
    reports = Reports()
    condition = await reconciler.reconcile(server(WEB, CHART), ctx(host, state, reports))
    assert [c.status for c in reports.conditions] == ["Modified"]
    assert "grafana.yaml" in reports.conditions[0].message
    assert condition.status == "Applied" and manifest(host, "grafana").read_text() == CHART.content

    # A change of the spec is not drift: rewritten without a Modified report.
    changed = WEB.model_copy(update={"content": WEB.content + "  labels: {tier: gold}\n"})
    reports = Reports()
    condition = await reconciler.reconcile(server(changed, CHART), ctx(host, state, reports))
    assert reports.conditions == [] and condition.status == "Applied"
    assert manifest(host, "web").read_text() == changed.content


async def test_other_nodes_report_applied_and_touch_nothing(
    host: SimulatedHost, state: StateDir
) -> None:
    reconciler = BundlesReconciler(state)
    for role in (None, "agent", "auto"):
        spec = Spec(k3s=K3sSpec(role=role), bundles=[WEB])
        condition = await reconciler.reconcile(spec, ctx(host, state))
        assert (condition.status, condition.message) == ("Applied", "not the K3s server node")
    assert not on_disk(host, MANIFESTS).exists()

    # A node that was the server and no longer is removes and deletes nothing.
    await reconciler.reconcile(server(WEB), ctx(host, state))
    condition = await reconciler.reconcile(Spec(k3s=K3sSpec(role="agent")), ctx(host, state))
    assert condition.status == "Applied"
    assert manifest(host, "web").exists() and kubectl_calls(host) == []


async def test_a_failed_delete_is_an_error_and_the_bundle_stays_managed(
    host: SimulatedHost, state: StateDir
) -> None:
    reconciler = BundlesReconciler(state)
    await reconciler.reconcile(server(WEB), ctx(host, state))
    binary = on_disk(host, K3S_BINARY)
    binary.rename(binary.with_suffix(".away"))

    condition = await reconciler.reconcile(server(), ctx(host, state))
    assert (condition.status, condition.reason) == ("Error", "DeleteFailed")
    assert "web.yaml" in condition.message and "kubectl delete" in condition.message
    assert manifest(host, "web").exists()
    assert f"{MANIFESTS}/web.yaml" in await asyncio.to_thread(reconciler.managed)

    # K3s is back: the next pass deletes and removes it.
    binary.with_suffix(".away").rename(binary)
    condition = await reconciler.reconcile(server(), ctx(host, state))
    assert (condition.status, condition.message) == ("Applied", "0 bundle(s)")
    assert not manifest(host, "web").exists()
    assert len(kubectl_calls(host)) == 1
