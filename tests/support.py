"""Real parts for tests: a Corral server in its own process (``tests.server_process``), the
CLI, simulated machines, agents."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registration import identity
from registration.protocol import PROTOCOL_VERSION, Cpu, Facts, Memory, RegisterRequest
from tests.server_process import BIN, REPO, PortTaken, Server, free_port

__all__ = ["BIN", "REPO", "Machine", "PortTaken", "Server", "free_port", "start_agent"]


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
