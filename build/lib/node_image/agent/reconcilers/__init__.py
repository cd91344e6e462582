"""Reconcilers, in the order the agent runs them. Add one by adding its factory here."""

from __future__ import annotations

from node_image.agent.reconcilers.base import Reconciler, ReconcilerFactory
from node_image.agent.reconcilers.bundles import BundlesReconciler
from node_image.agent.reconcilers.config import ConfigReconciler
from node_image.agent.reconcilers.k3s import K3sReconciler
from node_image.agent.reconcilers.os_update import OsUpdateReconciler
from node_image.agent.state import StateDir

#: In order: files first, then K3s, its bundles, and last the OS update (it may reboot; its
#: health check wants the node Ready).
REGISTRY: tuple[ReconcilerFactory, ...] = (
    ConfigReconciler,
    K3sReconciler,
    BundlesReconciler,
    OsUpdateReconciler,
)


def build(state: StateDir, registry: tuple[ReconcilerFactory, ...] = REGISTRY) -> list[Reconciler]:
    return [factory(state) for factory in registry]


__all__ = [
    "REGISTRY",
    "BundlesReconciler",
    "ConfigReconciler",
    "K3sReconciler",
    "OsUpdateReconciler",
    "Reconciler",
    "ReconcilerFactory",
    "build",
]
