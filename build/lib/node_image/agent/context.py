"""What a reconciler gets to work with: :class:`ReconcileContext`, and :func:`run_reconcile`,
which runs one reconciler under a timeout.

The context carries the host, the state directory, run-once markers, a streaming downloader
(resume, sha256, free-space check: :mod:`node_image.agent.download`), ``Progressing``
reports, commands and the reboot that first makes the outbox durable.

Everything here awaits or runs blocking work in threads, so a reconcile running as its own
task (a 300 MB download, an install) leaves the loop free for nudges, pulls and status
sending. A reconcile that runs past its timeout is cancelled and reported as ``Error`` /
``TimedOut``; a thread it started (a command) runs on until its own timeout, so long
commands pass one (``time_limit``) to :meth:`ReconcileContext.run`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from node_image.agent.download import Downloaded, Downloader, DownloadOptions, Progress
from node_image.agent.markers import Markers
from node_image.agent.outbox import Outbox
from node_image.agent.state import StateDir
from node_image.commands import CommandResult
from node_image.errors import AgentError
from node_image.host import Host
from registration.desired import Condition, Spec

if TYPE_CHECKING:
    from node_image.agent.reconcilers.base import Reconciler
    from node_image.agent.transport import ApiClient

log = logging.getLogger(__name__)

#: Sends a ``Progressing`` condition on its way (the daemon: outbox, then the flusher).
ProgressSink = Callable[[Condition], Awaitable[None]]

#: How long one reconciler may run unless the caller says otherwise.
DEFAULT_TIMEOUT = 3600.0


@dataclass
class ReconcileContext:
    """One reconciler's view of the agent for one pass. ``name`` is its condition type."""

    name: str
    host: Host
    state: StateDir
    #: Where ``Progressing`` reports go; None: they are only logged.
    report: ProgressSink | None = None
    #: Made durable before a reboot; None where there is no outbox (tests, tools).
    outbox: Outbox | None = None
    #: The client TLS context for downloads; None: built from the state directory's
    #: identity (mTLS to the Corral server) when there is one, else the system trust store.
    tls: ssl.SSLContext | None = None
    download_options: DownloadOptions = field(default_factory=DownloadOptions)
    #: The device's mTLS API client, for reports a reconciler makes (the K3s server node's
    #: join token); None where there is no server (tests, tools).
    api: ApiClient | None = None
    #: Progress is reported when the percentage has moved at least this much.
    progress_step: float = 5.0
    _last_percent: float = field(default=-math.inf, init=False)

    @property
    def markers(self) -> Markers:
        return Markers(self.state, self.host)

    @property
    def downloads(self) -> Path:
        """Where downloads are kept between runs (a ``.part`` resumes after a restart)."""
        return self.state.root / "downloads"

    async def progress(self, percent: float | None, reason: str, message: str) -> None:
        """Report ``Progressing``: ``message`` prefixed with the percentage when known.

        Reports closer than ``progress_step`` to the last one are dropped (100 % never is).
        """
        if percent is not None:
            if percent < 100 and abs(percent - self._last_percent) < self.progress_step:
                return
            self._last_percent = percent
            message = f"{math.floor(percent)}% {message}"
        condition = Condition(
            type=self.name, status="Progressing", reason=reason, message=message[:2048]
        )
        log.info("%s: %s %s", self.name, reason, message)
        if self.report is not None:
            await self.report(condition)

    async def download(
        self,
        url: str,
        dest: Path,
        sha256: str,
        size: int | None = None,
        *,
        what: str | None = None,
    ) -> Downloaded:
        """Fetch ``url`` into ``dest`` (resuming, verified), reporting ``Downloading``."""
        label = what or dest.name
        context = self.tls if self.tls is not None else await asyncio.to_thread(self._agent_tls)
        async with Downloader.open(context, self.download_options) as downloader:
            return await downloader.fetch(url, dest, sha256, size, self._download_progress(label))

    async def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        time_limit: float | None = None,
    ) -> CommandResult:
        """``host.run`` in a thread (killed after ``time_limit`` s); raises ``CommandError``."""
        return await asyncio.to_thread(self.host.run, argv, env, time_limit)

    async def reboot(self) -> NoReturn:
        """Make the outbox durable, then reboot; raises ``RebootRequested``.

        Report what is about to happen (``progress``) before calling this: the event is in
        the outbox, and the outbox is on disk, before the machine goes down.
        """
        if self.outbox is not None:
            seq = await asyncio.to_thread(self.outbox.flush_durable)
            log.info("%s: outbox durable up to seq %s; rebooting", self.name, seq)
        await asyncio.to_thread(self.host.reboot)
        raise AgentError("the host did not reboot")  # reboot() always raises

    def _download_progress(self, label: str) -> Progress:
        async def progress(done: int, total: int | None) -> None:
            percent = 100.0 * done / total if total else None
            size = f"{done // 2**20} of {total // 2**20} MiB" if total else f"{done} bytes"
            await self.progress(percent, "Downloading", f"{label} ({size})")

        return progress

    def _agent_tls(self) -> ssl.SSLContext | None:
        from node_image.agent.transport import client_tls

        state = self.state
        if not (state.ca.exists() and state.cert.exists() and state.key.exists()):
            return None
        return client_tls(state.ca, state.cert, state.key)


async def run_reconcile(
    reconciler: Reconciler,
    spec: Spec,
    ctx: ReconcileContext,
    time_limit: float = DEFAULT_TIMEOUT,
) -> Condition:
    """One reconciler's pass: its condition, ``Error``/``TimedOut`` past ``time_limit``
    seconds, or ``Error``/``InternalError`` for a bug. ``RebootRequested`` passes through."""
    limit = asyncio.timeout(time_limit)
    try:
        async with limit:
            return await reconciler.reconcile(spec, ctx)
    except TimeoutError as e:
        if not limit.expired():
            return _internal_error(reconciler.name, e)
        log.error("reconciler %s ran past %ss and was cancelled", reconciler.name, time_limit)
        return Condition(
            type=reconciler.name,
            status="Error",
            reason="TimedOut",
            message=f"did not finish within {time_limit:g}s; retrying",
        )
    except Exception as e:  # a reconciler bug must not stop the others or the agent
        return _internal_error(reconciler.name, e)


def _internal_error(name: str, error: Exception) -> Condition:
    log.error("reconciler %s failed", name, exc_info=error)
    return Condition(
        type=name,
        status="Error",
        reason="InternalError",
        message=f"{type(error).__name__}: {error}"[:2048],
    )
