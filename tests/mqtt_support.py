"""Real MQTT brokers for tests: Mosquitto in its own process, the embedded broker in the test's
event loop, client certificates, and mosquitto_sub/mosquitto_pub command lines.

``start_mosquitto`` and the ``MosquittoProcess`` methods block (files, a process); call them
from async tests through ``asyncio.to_thread``. ``start_embedded`` runs in the loop, like the
server does.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from edge_server.broker import EmbeddedBroker
from edge_server.mosquitto import MosquittoFiles, make_crl, write_config, write_crl
from registration import identity
from registration.mqtt import ClosingClient
from tests.server_process import free_port, terminate
from tests.waiting import wait_listening

HOST = "127.0.0.1"
MOSQUITTO = "mosquitto"
MOSQUITTO_SUB = "mosquitto_sub"
MOSQUITTO_PUB = "mosquitto_pub"


def issue_client(
    ca: identity.CertificateAuthority, cn: str, directory: Path, serial: int | None = None
) -> tuple[Path, Path]:
    """A client certificate and key for ``cn``, written as ``<cn>.pem`` and ``<cn>-key.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = identity.generate_key()
    cert = ca.issue_device(cn, key.public_key(), serial or identity.new_serial())
    cert_path, key_path = directory / f"{cn}.pem", directory / f"{cn}-key.pem"
    cert_path.write_bytes(identity.cert_to_pem(cert))
    key_path.write_bytes(identity.key_to_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def serial_of(cert_path: Path) -> int:
    return identity.cert_from_pem(cert_path.read_bytes()).serial_number


def client_tls(ca_path: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class MosquittoProcess:
    files: MosquittoFiles
    ca: identity.CertificateAuthority
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    revoked: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtts://{HOST}:{self.port}"

    def start(self, timeout: float = 10) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.files.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        try:
            wait_listening(self.port, lambda: proc.poll() is None, timeout)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; mosquitto log:\n{self.log()}") from e

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, so Mosquitto writes its persistence file (SIGKILL after ``timeout`` s)."""
        proc, self.proc = self.proc, None
        return None if proc is None else terminate(proc, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def hup(self) -> None:
        """SIGHUP: Mosquitto rereads its config, ACL file, certificates and CRL."""
        assert self.proc is not None and self.proc.poll() is None, "mosquitto is not running"
        self.proc.send_signal(signal.SIGHUP)

    def revoke(self, *serials: int) -> None:
        """Write a new CRL. Mosquitto reads it on the next hup() or restart()."""
        self.revoked.update(serials)
        write_crl(self.files, make_crl(self.ca, sorted(self.revoked)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_mosquitto(
    tmp_path: Path,
    ca: identity.CertificateAuthority,
    server_identity: str = "corral-server",
    replicas: Sequence[str] = (),
) -> MosquittoProcess:
    """Mosquitto with Corral's config on a free 127.0.0.1 port. Call ``stop()`` when done."""
    for attempt in range(3):  # another process may take the free port before Mosquitto does
        port = free_port()
        files = write_config(
            tmp_path / "mosquitto",
            ca,
            HOST,
            port,
            server_identity=server_identity,
            replicas=replicas,
            run_as=pwd.getpwuid(os.getuid()).pw_name,  # as root it would drop to "mosquitto"
        )
        mosquitto = MosquittoProcess(files, ca, port, tmp_path / f"mosquitto-{port}.log")
        try:
            mosquitto.start()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        return mosquitto
    raise AssertionError("unreachable")


def _write_embedded_pki(
    ca: identity.CertificateAuthority, directory: Path
) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "broker.pem",
        directory / "broker-key.pem",
    )
    key = identity.generate_key()
    cert = ca.issue_server(key, ["localhost", HOST], common_name="corral-embedded-broker")
    ca_path.write_bytes(identity.cert_to_pem(ca.cert))
    cert_path.write_bytes(identity.cert_to_pem(cert))
    key_path.write_bytes(identity.key_to_pem(key))
    return ca_path, cert_path, key_path


async def start_embedded(
    ca: identity.CertificateAuthority,
    directory: Path,
    is_revoked: Callable[[int, str], Awaitable[bool]],
    server_identity: str = "corral-server",
) -> EmbeddedBroker:
    """The embedded broker on a free 127.0.0.1 port, in this loop. ``await stop()`` it."""
    ca_path, cert_path, key_path = await asyncio.to_thread(_write_embedded_pki, ca, directory)
    broker = EmbeddedBroker(HOST, 0, ca_path, cert_path, key_path, is_revoked, server_identity)
    await broker.start()
    return broker


def revoked_set(serials: set[int]) -> Callable[[int, str], Awaitable[bool]]:
    """An ``is_revoked`` backed by a real set the test can add to."""

    async def is_revoked(serial: int, cn: str) -> bool:
        return serial in serials

    return is_revoked


# --- mosquitto_sub / mosquitto_pub -------------------------------------------------------


def _cli_tls(port: int, ca: Path, cert: Path | None, key: Path | None) -> list[str]:
    argv = ["-h", HOST, "-p", str(port), "--cafile", str(ca)]
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
    return argv


def mosquitto_sub(
    port: int,
    ca: Path,
    cert: Path | None,
    key: Path | None,
    topics: Sequence[str],
    *,
    client_id: str | None = None,
    count: int | None = None,
    wait: float = 2,
    qos: int = 1,
    extra: Sequence[str] = (),
) -> list[str]:
    """``mosquitto_sub -v``: prints ``topic payload`` lines; exits after ``count`` messages or
    ``wait`` seconds without one (exit code 27)."""
    argv = [MOSQUITTO_SUB, *_cli_tls(port, ca, cert, key), "-v", "-q", str(qos)]
    argv += ["-W", str(max(1, round(wait)))]
    if client_id is not None:
        argv += ["-i", client_id]
    if count is not None:
        argv += ["-C", str(count)]
    for topic in topics:
        argv += ["-t", topic]
    return argv + list(extra)


def mosquitto_pub(
    port: int,
    ca: Path,
    cert: Path | None,
    key: Path | None,
    topic: str,
    message: str,
    *,
    client_id: str | None = None,
    qos: int = 1,
    retain: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [MOSQUITTO_PUB, *_cli_tls(port, ca, cert, key), "-q", str(qos), "-t", topic]
    argv += ["-m", message]
    if client_id is not None:
        argv += ["-i", client_id]
    if retain:
        argv.append("-r")
    return argv + list(extra)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(argv: Sequence[str], seconds: float = 15) -> CliResult:
    """Run a mosquitto_* command from async code; kill it if it outlives ``seconds``."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(seconds):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def mqtt_client(*args: Any, **kw: Any) -> aiomqtt.Client:
    """A real MQTT client (aiomqtt), closing its socket when a connect fails, times out or is
    cancelled, as the server's and the agent's do (``registration.mqtt.ClosingClient``). A
    plain aiomqtt client keeps that socket open until the garbage collector finds it."""
    return ClosingClient(*args, **kw)
