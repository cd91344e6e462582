"""Real parts for tests: a Corral server in its own process (``tests.server_process``), the
CLI, simulated machines, agents."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.connector import NEEDS_CLEANUP_CLOSED

from registration import identity
from registration.protocol import PROTOCOL_VERSION, Cpu, Facts, Memory, RegisterRequest
from tests.server_process import BIN, REPO, PortTaken, Server, free_port

__all__ = [
    "BIN",
    "REPO",
    "Machine",
    "PortTaken",
    "Server",
    "device",
    "free_port",
    "import_artifact",
    "set_group",
    "start_agent",
]


def device(server: Server, device_id: str) -> dict[str, Any]:
    """A device as the API shows it (``corral device show -o json``)."""
    response = server.api("GET", f"/api/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def set_group(server: Server, name: str, selector: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Set group ``name``'s spec, creating the group with ``selector`` if there is none yet.
    Returns the server's answer (``devices_changed``, ...)."""
    response = server.api("PATCH", f"/api/v1/groups/{name}", {"spec": spec})
    if response.status_code == 404:
        body = {"name": name, "selector": selector, "spec": spec}
        response = server.api("POST", "/api/v1/groups", body)
    assert response.status_code in (200, 201), response.text
    data: dict[str, Any] = response.json()
    return data


def import_artifact(
    server: Server,
    data: bytes | Path,
    kind: str,
    name: str,
    version: str,
    arch: str | None = None,
) -> dict[str, Any]:
    """Import ``data`` (bytes, or a file streamed from disk) into the server's artifact mirror
    (``POST /api/v1/artifacts``, as ``corral artifact import`` does). Returns the artifact:
    its ``id``, ``sha256``, ``size`` and ``signature``; a device's spec names it by version."""
    query = {"kind": kind, "name": name, "version": version, **({"arch": arch} if arch else {})}
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    if isinstance(data, Path):
        with data.open("rb") as f:
            response = server.request(
                "POST", "/api/v1/artifacts", params=query, data=f, headers=headers, timeout=600
            )
    else:
        response = server.request(
            "POST", "/api/v1/artifacts", params=query, data=data, headers=headers
        )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


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


def start_agent(
    state: Path,
    seed: Path,
    simulated: Path,
    log: Path,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """A real ``corral-agent run`` process on a simulated host, polling every 2 s; ``env``
    is added to this process's environment, ``extra`` to its arguments (``--no-mqtt``)."""
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
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def tls_connector(server: Server, **kw: Any) -> aiohttp.TCPConnector:
    """An aiohttp connector that trusts ``server``'s CA and, when the session closes, aborts
    the TLS connections still shutting down: aiohttp closes a TLS transport and drops it
    without waiting for the peer, and on this Python (before 3.12.8) a test whose loop ends
    first leaves the socket to the garbage collector (aiohttp issue 1925)."""
    return aiohttp.TCPConnector(
        ssl=server.ssl_context(), enable_cleanup_closed=NEEDS_CLEANUP_CLOSED, **kw
    )
