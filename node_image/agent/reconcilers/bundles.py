"""The ``bundles`` reconciler: Kubernetes YAML and ``HelmChart`` objects, through K3s's
auto-deploy directory, on the K3s server node.

On the node whose spec says ``k3s.role: server`` each bundle is written atomically to
``/var/lib/rancher/k3s/server/manifests/<name>.yaml`` (under the host's root); K3s applies
what it finds there. The files and their sha256 are kept with the config reconciler's
bookkeeping (:mod:`~node_image.agent.reconcilers.managed_files`), so:

- a bundle the spec no longer lists is deleted from the cluster with
  ``k3s kubectl delete -f <file>`` (K3s does not delete objects when their file goes), then
  its file is removed;
- a file edited by hand (its sha256 is not what was written) is drift: reported
  ``Modified``, then put back, and the pass reports ``Applied``.

On any other node it reports ``Applied`` ("not the K3s server node") and touches nothing.
The steps are in :meth:`BundlesReconciler.reconcile`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers import k3s
from node_image.agent.reconcilers.deferred import BUNDLES, bundles_not_server
from node_image.agent.reconcilers.managed_files import ManagedFiles, Outcome, Plan, Wanted
from node_image.agent.state import StateDir
from node_image.errors import AgentError
from node_image.host import Host
from registration.desired import Bundle, Condition, Spec

log = logging.getLogger(__name__)

NAME = BUNDLES
#: K3s's auto-deploy directory on the server node.
MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
#: Where the K3s reconciler has the installer put the binary.
K3S_BINARY = f"{k3s.BIN_DIR}/k3s"
#: How long one ``kubectl delete`` may take.
DELETE_TIMEOUT = 120.0


def manifest_path(name: str) -> str:
    return f"{MANIFESTS}/{name}.yaml"


class BundlesReconciler:
    name = NAME

    def __init__(self, state: StateDir) -> None:
        self._files = ManagedFiles(state, NAME)

    def managed(self) -> dict[str, str]:
        """Manifest path → sha256 of what was written, for the files this node manages."""
        return self._files.load()

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        # 1. Only the K3s server node deploys bundles; elsewhere nothing is touched.
        if (idle := bundles_not_server(spec)) is not None:
            return idle
        outcome = Outcome(NAME)
        # 2. What we wrote, what the spec wants, what the manifests dir holds: the plan.
        wanted = self.wanted(spec.bundles)
        plan = await asyncio.to_thread(self._files.plan, ctx.host, wanted, outcome)
        # 3. Drift (a hand edit) is reported before it is repaired.
        if plan.drifted:
            await self._report_drift(ctx, plan)
        # 4. Delete removed bundles from the cluster, remove their files, write the rest,
        #    and record what we manage.
        await asyncio.to_thread(
            self._files.apply, ctx.host, plan, outcome, lambda path: _delete(ctx.host, path)
        )
        # 5. Report the state.
        return outcome.condition(f"{len(wanted)} bundle(s)")

    @staticmethod
    def wanted(bundles: Sequence[Bundle]) -> dict[str, Wanted]:
        return {manifest_path(b.name): Wanted(b.content.encode(), 0o600) for b in bundles}

    @staticmethod
    async def _report_drift(ctx: ReconcileContext, plan: Plan) -> None:
        names = ", ".join(p.rsplit("/", 1)[-1] for p in plan.drifted)
        log.warning("bundles: changed by hand, repairing: %s", names)
        if ctx.report is not None:
            await ctx.report(
                Condition(
                    type=NAME,
                    status="Modified",
                    reason="Drift",
                    message=f"changed on the node, repairing: {names}"[:2048],
                )
            )


def _delete(host: Host, path: str) -> None:
    """``k3s kubectl delete -f <file>`` for a removed bundle whose file is still there."""
    if host.read_file(path, limit=0) is None:
        log.warning("bundles: %s is gone; cannot delete its objects", path)
        return
    binary = str(host.resolve(K3S_BINARY))
    try:
        host.run(
            [binary, "kubectl", "delete", "--ignore-not-found", "-f", str(host.resolve(path))],
            timeout=DELETE_TIMEOUT,
        )
    except AgentError as e:
        raise AgentError(f"k3s kubectl delete failed: {e}") from e
    log.info("bundles: deleted the objects of %s", path)
