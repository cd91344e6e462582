"""``corral serve`` in a process of its own: the one server harness of the tests and benches.

:class:`Server` runs the server of this tree (``python -m edge_server.cli.main`` with the tree
first on ``PYTHONPATH``, so a worktree serves its own code) on a free 127.0.0.1 port, with the
embedded broker, or with Mosquitto configured the way an operator does it
(``corral broker mosquitto-config``). Tests run it with the blocking-call guard on
(``CORRAL_GUARD_BLOCKING=1``); benches turn the guard off, as it slows every call.

Its methods block (processes, files, HTTPS); call them from async code through
``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.waiting import wait_listening, wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORRAL = [sys.executable, "-m", "edge_server.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_env(**extra: str) -> dict[str, str]:
    """This process's environment with this tree's packages first on ``PYTHONPATH``."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def answers_healthz(url: str, ca: Path) -> bool:
    """Whether the server at ``url`` answers ``GET /healthz`` over TLS verified with ``ca``
    (False until the server has written its CA)."""
    if not ca.exists():
        return False
    try:
        return requests.get(f"{url}/healthz", verify=str(ca), timeout=2).ok
    except requests.RequestException:
        return False


class PortTaken(RuntimeError):
    pass


@dataclass
class Server:
    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    mqtt_port: int = field(default_factory=free_port)
    broker: str = "embedded"  # or "mosquitto"
    mosquitto: Any = None  # tests.mqtt_support.MosquittoProcess, with broker="mosquitto"
    started: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    guard_blocking: bool = True  # the test-only blocking-call guard in the server

    def __post_init__(self) -> None:
        if self.broker not in ("embedded", "mosquitto"):
            raise ValueError(f"broker must be embedded or mosquitto, not {self.broker!r}")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.mqtt_port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "corral.db"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    # --- processes

    def start_mosquitto(self) -> None:
        """Mosquitto, configured the way an operator does: ``corral broker mosquitto-config``."""
        from edge_server.mosquitto import MosquittoFiles
        from edge_server.pki import Pki
        from tests.mqtt_support import MosquittoProcess

        out = self.data_dir.parent / "mosquitto"
        self.corral(
            "broker",
            "mosquitto-config",
            "--out",
            str(out),
            "--listen",
            f"127.0.0.1:{self.mqtt_port}",
            "--run-as",
            "root",
        )
        ca = Pki(self.data_dir / "pki").load_ca()
        self.mosquitto = MosquittoProcess(
            MosquittoFiles.under(out), ca, self.mqtt_port, self.data_dir.parent / "mosquitto.log"
        )
        self.mosquitto.start()

    def restart_broker(self) -> None:
        if self.broker == "mosquitto":
            self.mosquitto.restart()
        else:  # the embedded broker lives and dies with the server
            self.stop()
            self.start()

    def start(self, timeout: float = 30) -> None:
        """Start (Mosquitto first, when it is the broker) and wait until ``/healthz`` answers."""
        if self.broker == "mosquitto" and self.mosquitto is None:
            self.start_mosquitto()
        for attempt in range(3):
            try:
                self.launch()
                self.wait_healthy(timeout)
                return
            except PortTaken:
                # Another process took a "free" port before the server bound it. Only a
                # first start may move; a restart must keep the URL the agents know.
                if attempt == 2 or self.started:
                    raise
                self.port = free_port()
                if self.broker == "embedded":
                    self.mqtt_port = free_port()

    def launch(self) -> subprocess.Popen[bytes]:
        """Start ``corral serve`` and return at once (see :meth:`wait_healthy`)."""
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env = tree_env(CORRAL_MQTT_LISTEN=f"127.0.0.1:{self.mqtt_port}")
        if self.guard_blocking:
            env["CORRAL_GUARD_BLOCKING"] = "1"
        else:
            env.pop("CORRAL_GUARD_BLOCKING", None)
        env.update(self.env)
        if self.broker == "mosquitto":
            env["CORRAL_MQTT_URL"] = self.mqtt_url
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*CORRAL, "--data-dir", str(self.data_dir), "serve"]
                + ["--listen", f"127.0.0.1:{self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.data_dir.parent,
            )
        return self.proc

    def _exited(self) -> bool:
        """False while the server runs; raises when it has exited (PortTaken for a lost port)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return False
        log = self.log()
        if "address already in use" in (log.splitlines() or [""])[-1]:
            raise PortTaken(log)
        raise RuntimeError(f"server exited: {log}")

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until ``GET /healthz`` answers over verified TLS."""

        def healthy() -> bool:
            return not self._exited() and answers_healthz(self.url, self.ca)

        try:
            wait_until("the server to answer /healthz", healthy, timeout)
        except AssertionError as e:
            raise RuntimeError(f"server did not come up: {self.log()}") from e
        self.started = True

    def wait_listening(self, timeout: float = 60) -> None:
        """Until the server accepts TCP connections (earlier than :meth:`wait_healthy`)."""
        wait_listening(self.port, lambda: not self._exited(), timeout, self.log)

    def wait_channel(self, timeout: float = 60) -> None:
        """Until the server's own MQTT client is connected to the broker."""

        def connected() -> bool:
            try:
                response = self.api("GET", "/api/v1/stats")
            except requests.RequestException:
                return False
            return response.ok and bool(response.json()["channel"]["connected"])

        try:
            wait_until("the server's MQTT channel to connect", connected, timeout)
        except AssertionError as e:
            raise RuntimeError(f"{e}:\n{self.log()[-3000:]}") from e

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (SIGKILL after ``timeout`` s); the exit code, None if it was not running."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout)
        self.proc = None
        return code

    def stop_all(self) -> None:
        self.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def problems(self) -> str:
        """The server log's tail when it shows a traceback or an unhandled error, else ""."""
        log = self.log()
        return log[-4000:] if "Traceback" in log or "unhandled error" in log else ""

    # --- the API and the CLI

    def request(self, method: str, path: str, timeout: float = 30, **kw: Any) -> requests.Response:
        """One HTTPS call, the server's certificate verified, no credentials but those in
        ``kw`` (``headers``, ``cert``, ...: ``requests.request``'s keywords)."""
        return requests.request(method, self.url + path, verify=str(self.ca), timeout=timeout, **kw)

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None, **kw: Any
    ) -> requests.Response:
        """One call with an API token (the admin's unless ``token``), ``body`` as JSON."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return self.request(method, path, json=body, headers=headers, **kw)

    def checked(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """:meth:`api` as the admin; the JSON answer, or RuntimeError unless 2xx."""
        response = self.api(method, path, body, **kw)
        if not response.ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def create_token(self, **body: Any) -> dict[str, Any]:
        response = self.api("POST", "/api/v1/tokens", {"ttl_seconds": 3600, **body})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def corral(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*CORRAL, "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=tree_env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} failed: {result.stderr}")
        return result
