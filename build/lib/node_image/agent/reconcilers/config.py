"""The ``config`` reconciler: the spec's config files, written atomically with their modes.

It remembers, durably, which files it wrote (``reconcilers/config.json`` in the state
directory, kept by :mod:`~node_image.agent.reconcilers.managed_files`). A file it manages
that the spec no longer lists is removed; a file it never wrote is never removed. A file
edited by hand is put back. The steps are in :meth:`ConfigReconciler.apply`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers.managed_files import ManagedFiles, Outcome, Wanted
from node_image.agent.state import StateDir
from node_image.host import Host
from registration.desired import Condition, ConfigFile, Spec

NAME = "config"


class ConfigReconciler:
    name = NAME

    def __init__(self, state: StateDir) -> None:
        self._files = ManagedFiles(state, NAME)

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        return await asyncio.to_thread(self.apply, spec.config, ctx.host)

    def managed(self) -> set[str]:
        """The paths this reconciler has written and not yet removed."""
        return set(self._files.load())

    def apply(self, files: Sequence[ConfigFile], host: Host) -> Condition:
        """The steps, in order. Blocking; :meth:`reconcile` runs it in a thread."""
        outcome = Outcome(NAME)
        # 1. What we wrote before, what the spec wants now, and what the host has.
        wanted = {f.path: Wanted(f.content.encode(), f.mode) for f in files}
        plan = self._files.plan(host, wanted, outcome)
        # 2. Remove what is no longer wanted, write what differs (content or mode), and
        #    remember what we manage, durably, before reporting.
        self._files.apply(host, plan, outcome)
        # 3. Report the state, not the work.
        return outcome.condition(f"{len(wanted)} file(s)")
