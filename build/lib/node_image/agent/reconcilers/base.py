"""The one interface every reconciler implements, and the conditions they report."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from node_image.agent.context import ReconcileContext
from node_image.agent.state import StateDir
from registration.desired import Condition, Spec

MAX_MESSAGE = 2048

#: ``errno`` → the ``reason`` of an Error condition.
_REASONS: dict[int, str] = {
    errno.ENOSPC: "NoSpace",
    errno.EDQUOT: "NoSpace",
    errno.EACCES: "PermissionDenied",
    errno.EPERM: "PermissionDenied",
    errno.EROFS: "ReadOnlyFilesystem",
    errno.ENOTDIR: "BadPath",
    errno.EEXIST: "BadPath",
    errno.EISDIR: "BadPath",
    errno.ENAMETOOLONG: "BadPath",
    errno.ELOOP: "BadPath",
}


@runtime_checkable
class Reconciler(Protocol):
    """Brings one part of the host to what the spec wants, idempotently.

    ``reconcile`` never raises for a failure it can describe: it returns a Condition whose
    status is ``Error`` with a reason and message. The agent retries with backoff.
    """

    @property
    def name(self) -> str:
        """The condition type it reports, for example ``config``."""
        ...

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        """Act through ``ctx.host`` only; long work reports ``ctx.progress``."""
        ...


#: Builds a reconciler for a device's state directory (where it keeps its own state).
ReconcilerFactory = Callable[[StateDir], Reconciler]


def reason_for(error: OSError) -> str:
    return _REASONS.get(error.errno or 0, "Failed")


def describe(path: str, error: OSError) -> str:
    """``<device path>: <what went wrong>``; the host's own paths stay out of reports."""
    return f"{path}: {error.strerror or error}"


def error_condition(kind: str, reason: str, problems: list[str]) -> Condition:
    message = "; ".join(problems)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return Condition(type=kind, status="Error", reason=reason, message=message)
