"""A device on the loop-attached GPT disk (``gpt_disk``) running the real agent in its own
process (``corral-agent reconcile`` on ``LinuxHost``), with signed OS images served over
HTTP on 127.0.0.1. Each reboot the agent asks for is followed by :meth:`Machine.power_on`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_image.agent import crashpoints
from registration import artifacts
from registration.artifacts import ArtifactRef
from tests.node_image.gpt_disk import Disk, Machine, gpt_disk, sh, squashfs
from tests.support import REPO, free_port

HEALTHY = '#!/bin/sh\ntest -n "$CORRAL_OS_VERSION" && test "$CORRAL_OS_SLOT" = B\n'
FAILING = "#!/bin/sh\necho 'kiosk.service did not start' >&2\nexit 1\n"


@dataclass
class Rig:
    disk: Disk
    machine: Machine
    state: Path
    images: Path
    url: str
    key: Ed25519PrivateKey
    runs: list[str] = field(default_factory=list)

    def ref(self, image: Path, version: str, *, signed: bool = True, **over: Any) -> ArtifactRef:
        data = image.read_bytes()
        fields: dict[str, Any] = {
            "id": f"os-{version}",
            "kind": "os-image",
            "name": "corral-os",
            "version": version,
            "url": f"{self.url}/{image.name}",
            "sha256": artifacts_sha(data),
            "size": len(data),
            "signature": "",
        }
        fields.update(over)
        ref = ArtifactRef.model_validate(fields)
        if signed:
            pem = self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            ref = ref.model_copy(
                update={"signature": artifacts.sign(pem, artifacts.ref_message(ref))}
            )
        return ref

    def spec(self, ref: ArtifactRef | None, version: str, **os_fields: Any) -> Path:
        os_spec: dict[str, Any] = {"version": version, **os_fields}
        if ref is not None:
            os_spec["image"] = ref.model_dump(mode="json")
        path = self.images.parent / "spec.json"
        path.write_text(json.dumps({"os": os_spec}))
        return path

    def agent(self, spec: Path, crash_at: str | None = None) -> tuple[int, dict[str, Any]]:
        """One ``corral-agent reconcile`` process; its exit code and its JSON answer."""
        env = {k: v for k, v in os.environ.items() if k != crashpoints.ENV}
        if crash_at is not None:
            env[crashpoints.ENV] = crash_at
        kernel = self.machine.kernel
        argv = [
            sys.executable, "-m", "node_image.agent.cli", "reconcile",
            "--spec", str(spec), "--state-dir", str(self.state),
            "--boot-dir", str(self.disk.state_mount),
            "--kernel-cmdline", str(kernel.cmdline), "--boot-id-file", str(kernel.boot_id),
            "--reboot-command", "true",
        ]  # fmt: skip
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        self.runs.append(done.stderr)
        if done.returncode != 0:
            return done.returncode, {}
        return 0, json.loads(done.stdout.strip().splitlines()[-1])

    @staticmethod
    def os_of(answer: dict[str, Any]) -> dict[str, Any]:
        """The os reconciler's condition in an agent's answer (whatever runs before it)."""
        found = [c for c in answer["conditions"] if c["type"] == "os"]
        assert len(found) == 1, answer
        return found[0]

    def converge(self, spec: Path, crash_at: str | None = None, runs: int = 8) -> dict[str, Any]:
        """Run the agent, booting the machine whenever it reboots, until it reports the os
        condition. With ``crash_at``, the first run that reaches that point is killed and
        the power is cut (the machine boots again) before the agent is started anew."""
        for _ in range(runs):
            code, answer = self.agent(spec, crash_at)
            if code == -signal.SIGKILL:
                assert crash_at is not None, self.runs[-1]
                crash_at = None
                self.machine.power_on()
                self.assert_bootable()
                continue
            assert code == 0, self.runs[-1]
            if answer.get("rebooting"):
                self.machine.power_on()
                continue
            return next(c for c in answer["conditions"] if c["type"] == "os")
        raise AssertionError(f"no os condition after {runs} runs:\n" + "\n".join(self.runs))

    def assert_bootable(self) -> None:
        """The slot this boot runs holds, whole, the image installed in it (checked against
        the sha256s of the images in play)."""
        booted = self.machine.booted()
        known = {artifacts_sha(p.read_bytes()): p for p in self.images.glob("*.squashfs")}
        slot = self.disk.layout.slot(booted)
        held = slot.read_bytes()
        assert any(held[: p.stat().st_size] == p.read_bytes() for p in known.values()), (
            f"slot {booted} does not hold a whole image"
        )


def artifacts_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def rig(tmp_path: Path) -> Iterator[Rig]:
    """v1.0 installed in slot A of a fresh disk, GRUB defaulting to A, the agent's state
    (with the pinned update-signing key) on the persistent partition."""
    images = tmp_path / "images"
    images.mkdir()
    v1 = squashfs(tmp_path, "1.0", HEALTHY)
    with gpt_disk(tmp_path) as disk:
        slot_a = disk.layout.slot("A")
        slot_a.write_bytes(v1.read_bytes())
        sh("grub-editenv", str(disk.layout.grubenv), "create")
        sh("grub-editenv", str(disk.layout.grubenv), "set", "corral_slot=A")
        machine = Machine(disk.layout, tmp_path / "kernel")
        assert machine.power_on() == "A"
        state = disk.persistent_mount / "var" / "lib" / "corral-agent"
        state.mkdir(parents=True)
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        (state / "update-signing.pub").write_text(base64.b64encode(raw).decode() + "\n")
        (images / v1.name).write_bytes(v1.read_bytes())
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
             "--directory", str(images)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_listening(port)
            yield Rig(disk, machine, state, images, f"http://127.0.0.1:{port}", key)
        finally:
            server.terminate()
            server.wait(10)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
