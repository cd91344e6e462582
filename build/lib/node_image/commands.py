"""The one way the agent runs a command on a device: :func:`run`, built on ``sh``.

A command that exits non-zero raises :class:`CommandFailed`, one that runs past its timeout
is killed (its whole process group, so ``sh -c`` children go too) and raises
:class:`CommandTimedOut`, and one that is not installed raises :class:`CommandNotFound`.
Each names the argv, the exit code and the tail of stderr.

Secrets travel in the environment, never in argv (the K3s installer's ``K3S_TOKEN``). Error
text never shows the environment, and the value of any variable whose name looks secret
(``TOKEN``, ``SECRET``, ``PASSWORD``, ``KEY``, …) is masked wherever it shows up in argv or
stderr.

:func:`run` blocks; the agent calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node_image.errors import AgentError

log = logging.getLogger(__name__)

#: How much of stderr an error message carries (the end is where the reason usually is).
STDERR_TAIL = 2000
MASK = "***"
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes


class CommandError(AgentError):
    """A command did not succeed. ``str()`` names argv, exit code and the stderr tail."""

    def __init__(self, argv: Sequence[str], exit_code: int | None, stderr_tail: str) -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"{shlex.join(self.argv)}: {self.what()}"
        return f"{text}: {self.stderr_tail}" if self.stderr_tail else text

    def what(self) -> str:
        return f"exit code {self.exit_code}"


class CommandFailed(CommandError):
    """The command exited non-zero (or was killed by a signal: a negative code)."""


class CommandNotFound(CommandFailed):
    """The executable is not on PATH (exit code 127, as a shell reports it)."""

    def what(self) -> str:
        return "command not found (exit code 127)"


class CommandTimedOut(CommandError):
    """The command ran past its timeout and was killed with its process group."""

    def __init__(
        self, argv: Sequence[str], exit_code: int | None, stderr_tail: str, timeout: float
    ) -> None:
        self.timeout = timeout
        super().__init__(argv, exit_code, stderr_tail)

    def what(self) -> str:
        return f"timed out after {self.timeout:g}s and was killed"


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    *,
    stdin: bytes = b"",
    cwd: str | None = None,
) -> CommandResult:
    """Run ``argv`` with the agent's environment plus ``env``; raise unless it exits 0.

    stdout and stderr are captured whole (commands the agent runs say little).
    """
    if not argv:
        raise AgentError("run: empty argv")
    argv = tuple(argv)
    secrets = _secret_values(env or {})
    shown = tuple(_mask(a, secrets) for a in argv)
    full_env = {**os.environ, **(env or {})}
    import sh  # imported on first use: an idle agent does not carry it

    try:
        command = sh.Command(argv[0])
    except sh.CommandNotFound as e:
        raise CommandNotFound(shown, 127, "") from e
    log.debug("run %s", shlex.join(shown))
    running = command(
        *argv[1:],
        _env=full_env,
        _in=stdin,
        _cwd=cwd,
        _bg=True,
        _bg_exc=False,
        _new_session=True,
        _tty_out=False,
        _truncate_exc=False,
        _return_cmd=True,
    )
    # sh's own timeouts signal only the leader (or poll); this kills the whole group at once.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(running.pid)

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        running.wait()  # returns once the output is read whole
    except sh.ErrorReturnCode as e:
        tail = _tail(e.stderr, secrets)
        if expired.is_set():
            raise CommandTimedOut(shown, e.exit_code, tail, timeout or 0.0) from e
        raise CommandFailed(shown, e.exit_code, tail) from e
    finally:
        if timer is not None:
            timer.cancel()
    return CommandResult(argv, running.exit_code or 0, running.stdout, running.stderr)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # new session: the group id is the leader's pid
    except ProcessLookupError:
        pass


def _secret_values(env: Mapping[str, str]) -> list[str]:
    found = [v for k, v in env.items() if v and _SECRET_NAME.search(k)]
    return sorted(found, key=len, reverse=True)


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _tail(stderr: bytes, secrets: Sequence[str]) -> str:
    text = _mask(stderr.decode(errors="replace"), secrets).strip()
    if len(text) > STDERR_TAIL:
        text = "…" + text[-STDERR_TAIL:]
    return text
