"""Reconcilers imported only once a spec asks something of them.

Most devices run no K3s; an agent that never needs the K3s and bundles reconcilers does not
keep their code resident (about 0.5 MB of an idle agent's 40, issue 6). A :class:`Deferred`
entry in the registry answers with its reconciler's "nothing to do" condition, decided
here from the spec alone, until the spec first asks for more; from then on the real
reconciler (imported and built once) does every pass. Each reconciler's module answers
the same way through the same function, so the condition has one source.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers.base import Reconciler
from node_image.agent.state import StateDir
from registration.desired import Condition, Spec

K3S = "k3s"
BUNDLES = "bundles"


def k3s_not_wanted(spec: Spec) -> Condition | None:
    """The ``k3s`` condition while the spec asks for no K3s; None when it asks for one."""
    if spec.k3s.version is not None:
        return None
    return Condition(
        type=K3S, status="Applied", reason="NotWanted", message="the spec asks for no K3s"
    )


def bundles_not_server(spec: Spec) -> Condition | None:
    """The ``bundles`` condition off the K3s server node (nothing is touched there)."""
    if spec.k3s.role == "server":
        return None
    return Condition(
        type=BUNDLES, status="Applied", reason="NotServer", message="not the K3s server node"
    )


@dataclass(frozen=True)
class Deferred:
    """A reconciler factory for the registry: ``module:factory``, imported on first need;
    ``idle`` answers while the spec asks nothing of it."""

    name: str
    module: str
    factory: str
    idle: Callable[[Spec], Condition | None]

    def __call__(self, state: StateDir) -> Reconciler:
        return _DeferredReconciler(self, state)

    def load(self, state: StateDir) -> Reconciler:
        factory: Callable[[StateDir], Reconciler] = getattr(
            importlib.import_module(self.module), self.factory
        )
        return factory(state)


class _DeferredReconciler:
    def __init__(self, deferred: Deferred, state: StateDir) -> None:
        self._deferred = deferred
        self._state = state
        self._real: Reconciler | None = None

    @property
    def name(self) -> str:
        return self._deferred.name

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        if self._real is None:
            if (idle := self._deferred.idle(spec)) is not None:
                return idle
            self._real = self._deferred.load(self._state)
        return await self._real.reconcile(spec, ctx)
