"""The README's first command: `make run` serves on embedded defaults and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.server_process import answers_healthz
from tests.support import REPO, free_port
from tests.waiting import wait_until


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

    def serving() -> bool:
        assert proc.poll() is None, log.read_text()
        return answers_healthz(f"https://127.0.0.1:{port}", data / "pki" / "ca.pem")

    try:
        wait_until("make run to serve", serving, 300, 0.2, detail=log.read_text)
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
        try:
            wait_until("the server to stop on SIGTERM", lambda: not _group_alive(proc.pid), 30)
        except AssertionError:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert "Traceback" not in log.read_text()
    assert "server stopped" in log.read_text()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
