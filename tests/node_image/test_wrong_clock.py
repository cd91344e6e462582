"""A wrong clock at first boot, with the real ``corral-agent`` under libfaketime against a
real server: a board without an RTC (1970) and a clock years ahead (the server's certificate
"expired"). The agent says so once, takes the time from the CA-pinned server, registers and
converges. The host's own clock never changes (see :mod:`tests.node_image.faketime_clock`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node_image.faketime_clock import NO_SYS_TIME, FakeClock, build_shim
from tests.node_image.test_agent_register import write_seed
from tests.support import BIN, Server
from tests.waiting import wait_until

IMPOSSIBLE = "before this agent was built"
EXPIRED = "is not valid at this device's time"


@pytest.fixture
def fake_clock(tmp_path: Path) -> Iterator[FakeClock]:
    """A fake clock for the agent; the test fails if the host's real clock moved."""
    wall, mono = time.time(), time.monotonic()
    yield FakeClock(tmp_path / "faketime.rc", build_shim(tmp_path))
    drift = (time.time() - wall) - (time.monotonic() - mono)
    assert abs(drift) < 2.0, f"the host clock moved by {drift:.1f}s"


def agent_argv(*args: str) -> list[str]:
    return [*NO_SYS_TIME, str(BIN / "corral-agent"), *args]


def machine_flags(tmp_path: Path) -> list[str]:
    """A LinuxHost (whose clock setting is real, and faked here) kept off the real boot."""
    kernel = tmp_path / "kernel"
    kernel.mkdir(exist_ok=True)
    (kernel / "cmdline").write_text("ro quiet\n")
    (kernel / "boot_id").write_text("0f0e0d0c-0b0a-0908-0706-050403020100\n")
    return [
        "--boot-dir",
        str(tmp_path / "boot"),
        "--kernel-cmdline",
        str(kernel / "cmdline"),
        "--boot-id-file",
        str(kernel / "boot_id"),
        "--reboot-command",
        "true",
        "--time-sync-wait",
        "1",
    ]


def register(server: Server, tmp_path: Path, clock: FakeClock) -> subprocess.CompletedProcess[str]:
    seed = write_seed(tmp_path / "seed.json", server.url, server.create_token()["token"])
    return subprocess.run(
        agent_argv("register", "--seed", str(seed), "--state-dir", str(tmp_path / "state"))
        + machine_flags(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **clock.env()},
    )


def assert_clock_set_to_the_servers(clock: FakeClock) -> None:
    offset = clock.offset()
    assert offset is not None, "the agent did not set its clock"
    assert abs(offset) <= 5, f"the agent's clock is {offset}s off the server's"


def test_register_at_1970_takes_the_time_from_the_pinned_server(
    server: Server, tmp_path: Path, fake_clock: FakeClock
) -> None:
    fake_clock.start_at("1970-01-02 00:00:00")
    done = register(server, tmp_path, fake_clock)
    assert done.returncode == 0, done.stderr
    device_id = json.loads(done.stdout)["device_id"]
    assert server.api("GET", f"/api/v1/devices/{device_id}").ok
    lines = done.stderr.splitlines()
    said = [line for line in lines if IMPOSSIBLE in line]
    assert len(said) == 1 and "the clock says 1970-01-02T00:00:0" in said[0], done.stderr
    assert sum("clock set from" in line for line in lines) == 1, done.stderr
    assert "not yet valid" not in done.stderr
    assert_clock_set_to_the_servers(fake_clock)


def test_register_years_ahead_corrects_the_clock_on_the_expired_certificate(
    server: Server, tmp_path: Path, fake_clock: FakeClock
) -> None:
    fake_clock.start_at("2032-06-01 00:00:00")  # the server's certificate has expired by then
    done = register(server, tmp_path, fake_clock)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"]
    lines = done.stderr.splitlines()
    said = [line for line in lines if EXPIRED in line]
    assert len(said) == 1 and "2032-06-01T" in said[0], done.stderr
    assert sum("clock set from" in line for line in lines) == 1, done.stderr
    assert IMPOSSIBLE not in done.stderr  # ahead is believable; the certificate said otherwise
    assert_clock_set_to_the_servers(fake_clock)


def converged(server: Server, device_id: str) -> bool:
    shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
    return bool(shown["online"] and shown["in_sync"] and shown["reported"])


def run_agent(tmp_path: Path, clock: FakeClock, *extra: str) -> subprocess.Popen[bytes]:
    log = tmp_path / "agent.log"
    with log.open("ab") as out:
        return subprocess.Popen(
            agent_argv("run", "--state-dir", str(tmp_path / "state"), "--poll-interval", "2")
            + machine_flags(tmp_path)
            + list(extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **clock.env()},
        )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()


def test_first_boot_run_at_1970_registers_once_and_converges(
    server: Server, tmp_path: Path, fake_clock: FakeClock
) -> None:
    fake_clock.start_at("1970-01-02 00:00:00")
    seed = write_seed(tmp_path / "seed.json", server.url, server.create_token()["token"])
    log = tmp_path / "agent.log"
    proc = run_agent(tmp_path, fake_clock, "--seed", str(seed))
    try:
        wait_until("identity", (tmp_path / "state" / "identity.json").exists, 90)
        device_id = json.loads((tmp_path / "state" / "identity.json").read_text())["device_id"]
        wait_until("the agent to converge", lambda: converged(server, device_id), 90)
        text = log.read_text()
        assert text.count(IMPOSSIBLE) == 1, text
        assert text.count("clock set from") == 1, text
        assert "registration failed" not in text and "not yet valid" not in text, text
        assert_clock_set_to_the_servers(fake_clock)
        stop(proc, log)
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_registered_agent_rebooted_into_1970_recovers_instead_of_looping(
    server: Server, tmp_path: Path, fake_clock: FakeClock
) -> None:
    fake_clock.rc.write_text("+1\n")  # registered while the clock was right
    done = register(server, tmp_path, fake_clock)
    assert done.returncode == 0, done.stderr
    device_id = json.loads(done.stdout)["device_id"]
    fake_clock.start_at("1970-01-02 00:00:00")  # then a reboot on a board without an RTC
    log = tmp_path / "agent.log"
    proc = run_agent(tmp_path, fake_clock)
    try:
        wait_until("the agent to converge", lambda: converged(server, device_id), 90)
        text = log.read_text()
        assert text.count(IMPOSSIBLE) == 1, text
        assert text.count("clock set from") == 1, text
        assert_clock_set_to_the_servers(fake_clock)
        stop(proc, log)
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_servers_time_is_taken_only_over_the_pinned_ca(server: Server) -> None:
    from node_image.agent import clock
    from registration import identity

    pinned = identity.fingerprint(identity.cert_from_pem(server.ca.read_bytes()))
    assert abs(clock.server_time(server.url, pinned) - time.time()) < 5
    with pytest.raises(clock.ClockError, match="not from the pinned CA"):
        clock.server_time(server.url, "00" * 32)
