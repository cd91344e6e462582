"""First boot of a real ``corral-agent run --seed``: it registers, then runs as the same
process without what registration loaded (cryptography, pyudev), like every later boot."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.node_image.test_agent_register import write_seed
from tests.support import BIN, Server, free_port, start_agent


def wait_until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_first_boot_agent_keeps_no_registration_libraries(server: Server, tmp_path: Path) -> None:
    token = server.create_token()["token"]
    seed = write_seed(tmp_path / "seed.json", server.url, token)
    state, log = tmp_path / "state", tmp_path / "agent.log"
    proc = start_agent(state, seed, tmp_path / "host", log)
    try:
        wait_until("identity", (state / "identity.json").exists)
        device_id = json.loads((state / "identity.json").read_text())["device_id"]

        def online() -> bool:
            return bool(server.api("GET", f"/api/v1/devices/{device_id}").json()["online"])

        wait_until("online", online)
        assert proc.poll() is None, log.read_text()
        maps = mapped(proc.pid)  # the same pid: systemd's unit keeps its main process
        assert "cryptography" not in maps and "libudev" not in maps, log.read_text()
        assert "_pydantic_core" not in maps  # documents are checked without pydantic
        assert "_ssl" in maps  # the real agent (TLS to the server), not some other process
        assert "registered as" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_first_boot_agent_retries_registration_and_stops_on_sigterm(tmp_path: Path) -> None:
    token = "crl1." + "0" * 64 + ".abcdefghij." + "A" * 43
    seed = write_seed(tmp_path / "seed.json", f"https://127.0.0.1:{free_port()}", token)
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "corral-agent"), "run", "--state-dir", str(tmp_path / "state")]
            + ["--seed", str(seed), "--simulated", str(tmp_path / "host")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until("a failed attempt", lambda: "registration failed" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
        assert not (tmp_path / "state" / "identity.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
