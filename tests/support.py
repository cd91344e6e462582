"""Real parts for tests: a Corral server in its own process, the CLI, simulated machines."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from registration import identity
from registration.protocol import PROTOCOL_VERSION, Cpu, Facts, Memory, RegisterRequest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(RuntimeError):
    pass


@dataclass
class Server:
    data_dir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    mqtt_port: int = field(default_factory=free_port)
    broker: str = "embedded"
    mosquitto: Any = None
    started: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

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
        if self.broker == "mosquitto" and self.mosquitto is None:
            self.start_mosquitto()
        for attempt in range(3):
            try:
                self._start(timeout)
                return
            except PortTaken:
                # Another process took a "free" port before the server bound it. Only a
                # first start may move; a restart must keep the URL the agents know.
                if attempt == 2 or self.started:
                    raise
                self.port = free_port()
                if self.broker == "embedded":
                    self.mqtt_port = free_port()

    def _start(self, timeout: float) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env = {
            **os.environ,
            "CORRAL_GUARD_BLOCKING": "1",
            "CORRAL_MQTT_LISTEN": f"127.0.0.1:{self.mqtt_port}",
            **self.env,
        }
        if self.broker == "mosquitto":
            env["CORRAL_MQTT_URL"] = f"mqtts://127.0.0.1:{self.mqtt_port}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "corral"),
                    "--data-dir",
                    str(self.data_dir),
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                if "address already in use" in (log.splitlines() or [""])[-1]:
                    raise PortTaken(log)
                raise RuntimeError(f"server exited: {log}")
            try:
                if (
                    self.ca.exists()
                    and requests.get(f"{self.url}/healthz", verify=str(self.ca), timeout=2).ok
                ):
                    self.started = True
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up: {self.log()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
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
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None, **kw: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return requests.request(
            method,
            self.url + path,
            json=body,
            headers=headers,
            verify=str(self.ca),
            timeout=30,
            **kw,
        )

    def create_token(self, **body: Any) -> dict[str, Any]:
        response = self.api("POST", "/api/v1/tokens", {"ttl_seconds": 3600, **body})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def corral(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "corral"), "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} failed: {result.stderr}")
        return result


@dataclass
class Machine:
    """A simulated machine: its own key, CSR and DMI UUID."""

    dmi_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: identity.PrivateKey = field(default_factory=identity.generate_key)

    def facts(self) -> Facts:
        dmi = {"product_uuid": self.dmi_uuid} if self.dmi_uuid else {}
        return Facts(
            hostname="sim", dmi=dmi, cpu=Cpu(model="sim", count=2), memory=Memory(total_bytes=2**30)
        )

    def request(self, token: str, **overrides: Any) -> dict[str, Any]:
        doc = RegisterRequest(
            token=token,
            csr=identity.make_csr(self.key).decode(),
            facts=self.facts(),
            labels={},
            agent_version="test",
            protocol_version=PROTOCOL_VERSION,
        )
        body: dict[str, Any] = json.loads(doc.model_dump_json())
        body.update(overrides)
        return body

    def write_identity(self, directory: Path, register_answer: dict[str, Any]) -> tuple[str, str]:
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / "cert.pem"
        key = directory / "key.pem"
        cert.write_text(register_answer["certificate"])
        key.write_bytes(identity.key_to_pem(self.key))
        return str(cert), str(key)


def start_agent(state: Path, seed: Path, simulated: Path, log: Path) -> subprocess.Popen[bytes]:
    """A real ``corral-agent run`` process on a simulated host, polling every 2 s."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                str(BIN / "corral-agent"),
                "run",
                "--state-dir",
                str(state),
                "--seed",
                str(seed),
                "--simulated",
                str(simulated),
                "--poll-interval",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
