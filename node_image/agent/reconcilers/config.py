"""The ``config`` reconciler: the spec's config files, written atomically with their modes.

It remembers, durably, which files it wrote (``reconcilers/config.json`` in the state
directory). A file it manages that the spec no longer lists is removed; a file it never
wrote is never removed. The steps are in :meth:`ConfigReconciler.apply`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers.base import describe, error_condition, reason_for
from node_image.agent.state import StateDir, read_json
from node_image.errors import AgentError
from node_image.host import Host
from registration.desired import Condition, ConfigFile, Spec

log = logging.getLogger(__name__)

NAME = "config"


@dataclass
class _Run:
    written: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)
    reason: str = ""

    def failed(self, path: str, error: OSError | AgentError) -> None:
        if isinstance(error, OSError):
            reason, text = reason_for(error), describe(path, error)
        else:
            reason, text = "BadPath", f"{path}: {error}"
        log.warning("config %s", text)
        self.reason = self.reason or reason
        self.problems.append(text)


class ConfigReconciler:
    name = NAME

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._path = state.reconciler(NAME)

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        return await asyncio.to_thread(self.apply, spec.config, ctx.host)

    def managed(self) -> set[str]:
        """The paths this reconciler has written and not yet removed."""
        data = read_json(self._path)
        if not isinstance(data, dict):
            return set()
        return {p for p in data.get("files", []) if isinstance(p, str)}

    def apply(self, files: Sequence[ConfigFile], host: Host) -> Condition:
        """The steps, in order. Blocking; :meth:`reconcile` runs it in a thread."""
        run = _Run()
        # 1. What we wrote before, and what the spec wants now.
        before = self.managed()
        managed = set(before)
        wanted = {f.path: f for f in files}
        # 2. Remove what we wrote that is no longer wanted (first: a removed file may be
        #    in the way of a wanted directory).
        for path in sorted(before - wanted.keys()):
            try:
                if host.remove_file(path):
                    run.removed += 1
            except (OSError, AgentError) as e:
                run.failed(path, e)
                continue
            managed.discard(path)
        # 3. Write what differs, content or mode. A file already as wanted is claimed.
        for path, wanted_file in sorted(wanted.items()):
            try:
                if self._ensure(host, wanted_file):
                    run.written += 1
            except (OSError, AgentError) as e:
                run.failed(path, e)
                continue
            managed.add(path)
        # 4. Remember what we manage, durably, before reporting.
        if managed != before:
            self._state.write_json(self._path, {"files": sorted(managed)})
        # 5. Report the state, not the work: a rerun that changes nothing reports the same.
        if run.written or run.removed:
            log.info("config: %s written, %s removed", run.written, run.removed)
        if run.problems:
            return error_condition(NAME, run.reason, run.problems)
        return Condition(
            type=NAME, status="Applied", reason="Applied", message=f"{len(wanted)} file(s)"
        )

    @staticmethod
    def _ensure(host: Host, wanted: ConfigFile) -> bool:
        """Write ``wanted`` unless the host already has it; True if written."""
        content = wanted.content.encode()
        current = host.read_file(wanted.path, limit=len(content))
        if current is not None and current.content == content and current.mode == wanted.mode:
            return False
        host.write_file(wanted.path, content, wanted.mode)
        log.info("config wrote %s (mode %o)", wanted.path, wanted.mode)
        return True
