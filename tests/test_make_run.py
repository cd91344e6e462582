"""The README's first command: `make run` serves on embedded defaults and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.support import REPO, free_port


def test_make_run_serves_https_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "corral-data"
    env = {
        **os.environ,
        "CORRAL_DATA_DIR": str(data),
        "CORRAL_LISTEN": f"127.0.0.1:{port}",
        "CORRAL_MQTT_LISTEN": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            ca = data / "pki" / "ca.pem"
            try:
                if (
                    ca.exists()
                    and requests.get(
                        f"https://127.0.0.1:{port}/healthz", verify=str(ca), timeout=2
                    ).ok
                ):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"make run did not serve: {log.read_text()}")
        text = log.read_text()
        assert "admin password:" in text and "admin API token:" in text
        token_file = data / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text().strip() in text
        # The CLI finds the local server and its token in the data dir by itself.
        listing = subprocess.run(
            [str(REPO / ".venv" / "bin" / "corral"), "token", "list", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.strip() == "[]"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        # make exits at once; the server it started shuts down in its own time.
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the server did not stop within 30 s of SIGTERM")
    assert "Traceback" not in log.read_text()
    assert "server stopped" in log.read_text()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
