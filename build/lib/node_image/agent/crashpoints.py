"""Named points where a test may cut the power: the agent ``SIGKILL``s itself there.

A test hook at the edge, for the power-loss tests: with ``CORRAL_AGENT_CRASH_AT=<name>`` in
its environment, the agent process kills itself with ``SIGKILL`` (no cleanup, no flush,
exactly a ``kill -9``) when it reaches the point of that name, for example ``os:write`` just
before the OS reconciler writes the inactive slot. Unset (always, outside tests), a crash
point does nothing but read one environment variable.

The points of a procedure are listed next to it (``os_update.CRASH_POINTS``), so a test can
walk through every one of them in turn.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "CORRAL_AGENT_CRASH_AT"


def reached(name: str) -> None:
    """Die here, at once, if the test hook names this point."""
    if os.environ.get(ENV) == name:
        log.warning("crash point %s reached: killing this process (%s)", name, ENV)
        os.kill(os.getpid(), signal.SIGKILL)
