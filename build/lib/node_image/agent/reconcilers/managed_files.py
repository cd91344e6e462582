"""Managed-files bookkeeping, shared by the reconcilers that write files (``config``,
``bundles``).

A reconciler remembers, durably, which files it wrote and the sha256 of what it wrote
(``reconcilers/<name>.json`` in the state directory). From that and what the spec wants,
:meth:`ManagedFiles.plan` works out what to remove, what to write and which files were
changed by hand since (drift). A file it manages that the spec no longer lists is removed;
a file it never wrote is never removed. :meth:`ManagedFiles.apply` does the work and
records the result before the caller reports.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from node_image.agent.reconcilers.base import describe, error_condition, reason_for
from node_image.agent.state import StateDir, read_json
from node_image.errors import AgentError
from node_image.host import Host
from registration.desired import Condition

log = logging.getLogger(__name__)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class Wanted:
    """One file as the spec wants it."""

    content: bytes
    mode: int

    @property
    def sha256(self) -> str:
        return sha256(self.content)


@dataclass
class Plan:
    """What one pass must do. ``drifted``: managed files edited or removed since they were
    written (by hand), each is also in ``write``."""

    before: dict[str, str]
    wanted: dict[str, Wanted]
    remove: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)
    #: Wanted files that could not be read (not claimed, not written).
    unreadable: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What one pass did, and what went wrong (device paths only)."""

    name: str
    written: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)
    reason: str = ""

    def failed(self, path: str, error: OSError | AgentError, reason: str = "BadPath") -> None:
        if isinstance(error, OSError):
            reason, text = reason_for(error), describe(path, error)
        else:
            text = f"{path}: {error}"
        log.warning("%s %s", self.name, text)
        self.reason = self.reason or reason
        self.problems.append(text)

    def condition(self, applied_message: str) -> Condition:
        """Report the state, not the work: a rerun that changes nothing reports the same."""
        if self.written or self.removed:
            log.info("%s: %s written, %s removed", self.name, self.written, self.removed)
        if self.problems:
            return error_condition(self.name, self.reason, self.problems)
        return Condition(
            type=self.name, status="Applied", reason="Applied", message=applied_message
        )


#: Called before a managed file that is no longer wanted is removed (bundles: delete the
#: Kubernetes objects it made). Raising skips the removal; the file stays managed.
BeforeRemove = Callable[[str], None]


class ManagedFiles:
    """The files one reconciler manages on the host, kept in its state file."""

    def __init__(self, state: StateDir, name: str) -> None:
        self.name = name
        self._state = state
        self._path = state.reconciler(name)

    def load(self) -> dict[str, str]:
        """Managed path → sha256 of what was written ("" when not known: an older record)."""
        data = read_json(self._path)
        if not isinstance(data, dict):
            return {}
        files = data.get("files")
        if isinstance(files, list):  # the first format: paths only
            return {p: "" for p in files if isinstance(p, str)}
        if isinstance(files, dict):
            return {p: s for p, s in files.items() if isinstance(p, str) and isinstance(s, str)}
        return {}

    def save(self, files: Mapping[str, str]) -> None:
        self._state.write_json(self._path, {"files": dict(sorted(files.items()))})

    def plan(self, host: Host, wanted: Mapping[str, Wanted], outcome: Outcome) -> Plan:
        """Compare the record, the spec and the host. Blocking (reads the files)."""
        plan = Plan(before=self.load(), wanted=dict(wanted))
        plan.remove = sorted(plan.before.keys() - plan.wanted.keys())
        for path, file in sorted(plan.wanted.items()):
            try:
                current = host.read_file(path, limit=len(file.content))
            except (OSError, AgentError) as e:
                outcome.failed(path, e)
                plan.unreadable.add(path)
                continue
            if current is not None and current.content == file.content:
                if current.mode != file.mode:
                    plan.write.append(path)
                continue
            plan.write.append(path)
            recorded = plan.before.get(path)
            if recorded and (current is None or sha256(current.content) != recorded):
                plan.drifted.append(path)  # edited or removed by hand
        return plan

    def apply(
        self,
        host: Host,
        plan: Plan,
        outcome: Outcome,
        before_remove: BeforeRemove | None = None,
    ) -> None:
        """Remove, then write, then record. Blocking. Removal goes first: a removed file may
        be in the way of a wanted directory."""
        managed = dict(plan.before)
        for path in plan.remove:
            if before_remove is not None:
                try:
                    before_remove(path)
                except (OSError, AgentError) as e:
                    outcome.failed(path, e, reason="DeleteFailed")
                    continue
            try:
                if host.remove_file(path):
                    outcome.removed += 1
            except (OSError, AgentError) as e:
                outcome.failed(path, e)
                continue
            managed.pop(path, None)
        for path, file in sorted(plan.wanted.items()):
            if path in plan.unreadable:
                continue
            if path in plan.write:
                try:
                    host.write_file(path, file.content, file.mode)
                except (OSError, AgentError) as e:
                    outcome.failed(path, e)
                    continue
                outcome.written += 1
                log.info("%s wrote %s (mode %o)", self.name, path, file.mode)
            managed[path] = file.sha256
        if managed != plan.before:
            self.save(managed)
