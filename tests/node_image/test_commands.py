"""Host.run: real commands through ``sh``; failures name argv, exit code and stderr."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node_image.commands import CommandFailed, CommandNotFound, CommandTimedOut, run
from node_image.errors import AgentError
from node_image.host import LinuxHost, SimulatedHost


def test_a_command_that_succeeds_returns_its_output(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    result = host.run(["sh", "-c", "echo out; echo err >&2"])
    assert result.exit_code == 0 and result.stdout == b"out\n" and result.stderr == b"err\n"
    assert host.run(["true"]).exit_code == 0


def test_env_is_added_to_the_agents_environment() -> None:
    result = LinuxHost().run(["sh", "-c", 'echo "$CORRAL_X:$PATH"'], env={"CORRAL_X": "y"})
    assert result.stdout.decode().startswith(f"y:{os.environ['PATH']}")


def test_a_failure_names_argv_exit_code_and_the_tail_of_stderr() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", "echo first >&2; echo 'disk is on fire' >&2; exit 3"])
    error = caught.value
    assert isinstance(error, AgentError)
    assert error.exit_code == 3 and error.argv[0] == "sh"
    assert "exit code 3" in str(error) and "disk is on fire" in str(error)
    assert str(error).startswith("sh -c ")
    with pytest.raises(CommandFailed, match=r"^false: exit code 1$"):
        run(["false"])


def test_only_the_tail_of_a_long_stderr_is_kept() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(
            ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"]
        )
    tail = caught.value.stderr_tail
    assert tail.endswith("line1999") and "line0\n" not in tail and len(tail) <= 2001


def test_secrets_from_env_never_appear_in_the_error() -> None:
    secret = "K10abc::server:s3cr3t-join-token"
    env = {"K3S_TOKEN": secret, "INSTALL_K3S_VERSION": "v1.31.4+k3s1"}
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", 'echo "bad token $K3S_TOKEN" >&2; exit 1', secret], env=env)
    text = str(caught.value)
    assert secret not in text and "bad token ***" in text
    assert secret not in repr(caught.value.argv) and caught.value.argv[-1] == "***"


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        run(["sh", "-c", f"echo slow >&2; sleep 30 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert "timed out after 0.5s" in str(caught.value) and "slow" in str(caught.value)
    assert not isinstance(caught.value, CommandFailed)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the background sleep survived the timeout"


def test_a_missing_executable_is_command_not_found() -> None:
    with pytest.raises(CommandNotFound, match="not found"):
        run(["corral-no-such-command", "--help"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
