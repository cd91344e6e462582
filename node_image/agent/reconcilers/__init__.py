"""Reconcilers, in the order the agent runs them. Add one by adding its factory here."""

from __future__ import annotations

from typing import Any

from node_image.agent.reconcilers.base import Reconciler, ReconcilerFactory
from node_image.agent.reconcilers.config import ConfigReconciler
from node_image.agent.reconcilers.deferred import (
    BUNDLES,
    K3S,
    Deferred,
    bundles_not_server,
    k3s_not_wanted,
)
from node_image.agent.reconcilers.os_update import OsUpdateReconciler
from node_image.agent.state import StateDir

#: K3s and its bundles, imported once a spec asks for them (most devices run no K3s).
K3S_RECONCILER = Deferred(K3S, "node_image.agent.reconcilers.k3s", "K3sReconciler", k3s_not_wanted)
BUNDLES_RECONCILER = Deferred(
    BUNDLES, "node_image.agent.reconcilers.bundles", "BundlesReconciler", bundles_not_server
)

#: In order: files first, then K3s, its bundles, and last the OS update (it may reboot; its
#: health check wants the node Ready).
REGISTRY: tuple[ReconcilerFactory, ...] = (
    ConfigReconciler,
    K3S_RECONCILER,
    BUNDLES_RECONCILER,
    OsUpdateReconciler,
)

#: Names importable from here whose modules load only when asked for.
_DEFERRED = {
    "K3sReconciler": "node_image.agent.reconcilers.k3s",
    "BundlesReconciler": "node_image.agent.reconcilers.bundles",
}


def __getattr__(name: str) -> Any:
    if name in _DEFERRED:
        import importlib

        return getattr(importlib.import_module(_DEFERRED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(state: StateDir, registry: tuple[ReconcilerFactory, ...] = REGISTRY) -> list[Reconciler]:
    return [factory(state) for factory in registry]


__all__ = [
    "BUNDLES_RECONCILER",
    "K3S_RECONCILER",
    "REGISTRY",
    "BundlesReconciler",
    "ConfigReconciler",
    "Deferred",
    "K3sReconciler",
    "OsUpdateReconciler",
    "Reconciler",
    "ReconcilerFactory",
    "build",
]
