"""The K3s reconciler on a SimulatedHost, with the stand-in installer, ``k3s`` and
``systemctl`` (``tests/fixtures/k3s``), and signed artifacts served over real HTTP.

What it proves: the installer runs through ``sh`` with exactly the documented environment;
the binary and images are staged where K3s expects them; a second pass runs nothing; an
upgrade runs the installer again; a failing installer gives ``Error`` with its stderr (the
token masked); a bad signature or sha256 is refused before anything runs.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_image.agent.context import ReconcileContext
from node_image.agent.download import DownloadOptions
from node_image.agent.reconcilers.k3s import K3sReconciler, Timing
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.artifacts import ArtifactRef, sign, signing_message
from registration.desired import Condition, K3sSpec, Spec
from tests.k3s_standins import (
    Release,
    installer_runs,
    installer_variables,
    path_with_standins,
    release,
)

DEVICE = "dev-0123456789ab"
URL = "https://10.1.2.3:6443"
TOKEN = "K10deadbeef::server:s3cret-join-token"
FAST = DownloadOptions(attempts=2, retry_delay=0.05, reserve=0)
TIMING = Timing(ready_timeout=5, ready_interval=0.1, install_timeout=60)


@dataclass
class Mirror:
    """Artifacts served over plain HTTP; ``requests`` counts what was fetched."""

    root: Path
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    url: str = ""
    requests: list[str] = field(default_factory=list)

    @property
    def public(self) -> str:
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def ref(
        self, kind: str, name: str, path: Path, version: str, arch: str | None, **lie: object
    ) -> ArtifactRef:
        """A signed reference to ``path``; ``lie`` replaces fields after signing or (with
        ``signed_sha256``) signs a sha256 other than the file's."""
        data = path.read_bytes()
        sha = str(lie.pop("signed_sha256", hashlib.sha256(data).hexdigest()))
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        message = signing_message(kind, name, version, arch, sha, len(data))
        served = f"{version}/{path.name}"
        (self.root / version).mkdir(parents=True, exist_ok=True)
        (self.root / served).write_bytes(data)
        fields = {
            "id": hashlib.sha256(f"{kind}{version}".encode()).hexdigest()[:16],
            "kind": kind,
            "name": name,
            "version": version,
            "arch": arch,
            "url": f"{self.url}/{served}",
            "sha256": sha,
            "size": len(data),
            "signature": sign(pem, message),
        }
        fields.update(lie)
        return ArtifactRef.model_validate(fields)

    def spec(self, found: Release, role: str = "server", **lie: object) -> Spec:
        v = found.version
        k3s = K3sSpec(
            version=v,
            role=role,  # type: ignore[arg-type]
            server_url=URL if role == "agent" else None,
            token=TOKEN if role == "agent" else None,
            install_script=self.ref("k3s-install", "install.sh", found.install_script, v, None),
            binary=self.ref("k3s-binary", "k3s", found.binary, v, "amd64", **lie),
            images=self.ref("k3s-images", found.images.name, found.images, v, "amd64"),
        )
        return Spec(k3s=k3s)


@pytest.fixture
async def mirror(tmp_path: Path) -> AsyncIterator[Mirror]:
    found = Mirror(tmp_path / "mirror")
    found.root.mkdir()

    async def serve(request: web.Request) -> web.StreamResponse:
        found.requests.append(request.path)
        path = found.root / request.match_info["version"] / request.match_info["name"]
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{version}/{name}", serve)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        await runner.cleanup()


@dataclass
class Device:
    host: SimulatedHost
    state: StateDir
    reports: list[Condition]
    reconciler: K3sReconciler

    def context(self) -> ReconcileContext:
        async def report(condition: Condition) -> None:
            self.reports.append(condition)

        return ReconcileContext(
            "k3s",
            self.host,
            self.state,
            report=report,
            tls=ssl.create_default_context(),
            download_options=FAST,
        )

    async def reconcile(self, spec: Spec) -> Condition:
        return await self.reconciler.reconcile(spec, self.context())

    def file(self, path: str) -> Path:
        return self.host.rootfs / path.lstrip("/")

    @property
    def runs(self) -> list[dict[str, str]]:
        return installer_runs(self.host.rootfs)


@pytest.fixture
def device(tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> Device:
    """A registered device (identity files, the pinned update-signing key) on a SimulatedHost,
    with the stand-in systemctl first on PATH."""
    monkeypatch.setenv("PATH", path_with_standins())
    state = StateDir(tmp_path / "state", fsync=False)
    state.ensure()
    state.write_identity({"device_id": DEVICE, "endpoints": {"api": mirror.url}})
    state.cert.write_text("unused here")
    state.key.write_text("unused here")
    state.update_signing_pub.write_text(mirror.public + "\n")
    host = SimulatedHost(tmp_path / "device")
    return Device(host, state, [], K3sReconciler(state, TIMING))


def expected_variables(device: Device, version: str, role: str) -> dict[str, str]:
    expected = {
        "INSTALL_K3S_SKIP_DOWNLOAD": "true",
        "INSTALL_K3S_VERSION": version,
        "INSTALL_K3S_EXEC": role,
        "K3S_NODE_NAME": DEVICE,
        "INSTALL_K3S_BIN_DIR": str(device.file("/usr/local/bin")),
        "INSTALL_K3S_SYSTEMD_DIR": str(device.file("/etc/systemd/system")),
        "INSTALL_K3S_SKIP_SELINUX_RPM": "true",
    }
    if role == "agent":
        expected |= {"K3S_URL": URL, "K3S_TOKEN": TOKEN}
    return expected


async def test_a_server_is_installed_through_install_sh_with_the_documented_environment(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    condition = await device.reconcile(mirror.spec(found))
    assert (condition.status, condition.reason) == ("Ready", "NodeReady"), condition
    [run] = device.runs
    assert installer_variables(run) == expected_variables(device, "v1.31.4+k3s1", "server")
    binary = device.file("/usr/local/bin/k3s")
    assert (
        binary.read_bytes() == found.binary.read_bytes() and binary.stat().st_mode & 0o777 == 0o755
    )
    images = device.file("/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst")
    assert images.read_bytes() == found.images.read_bytes()
    # What the installer wrote for a server: k3s.service, its 0600 env file, the scripts.
    unit = device.file("/etc/systemd/system/k3s.service")
    assert f"ExecStart={binary} \\\n    server" in unit.read_text()
    assert device.file("/etc/systemd/system/k3s.service.env").stat().st_mode & 0o777 == 0o600
    assert device.file("/usr/local/bin/k3s-uninstall.sh").exists()
    assert device.file("/usr/local/bin/k3s-killall.sh").exists()
    assert device.file("/var/lib/rancher/k3s/server/node-token").stat().st_mode & 0o777 == 0o600
    assert [c.reason for c in device.reports][:3] == ["Downloading", "Downloading", "Downloading"]
    assert "Installing" in [c.reason for c in device.reports]


async def test_an_agent_joins_with_url_and_token_in_the_environment_only(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    condition = await device.reconcile(mirror.spec(found, role="agent"))
    assert condition.status == "Ready", condition
    [run] = device.runs
    assert installer_variables(run) == expected_variables(device, "v1.31.4+k3s1", "agent")
    env_file = device.file("/etc/systemd/system/k3s-agent.service.env")
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert f"K3S_TOKEN='{TOKEN}'" in env_file.read_text().splitlines()
    assert f"K3S_URL='{URL}'" in env_file.read_text().splitlines()
    assert device.file("/usr/local/bin/k3s-agent-uninstall.sh").exists()
    assert not device.file("/etc/systemd/system/k3s.service").exists()
    # The token is in no report, and in no record of the agent's own.
    assert all(TOKEN not in c.message for c in device.reports)
    assert TOKEN not in device.state.reconciler("k3s").read_text()


async def test_a_second_pass_runs_nothing_and_an_upgrade_runs_the_installer_again(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    first = release("v1.31.4+k3s1", tmp_path / "v1")
    assert (await device.reconcile(mirror.spec(first))).status == "Ready"
    fetched = len(mirror.requests)
    condition = await device.reconcile(mirror.spec(first))
    assert (condition.status, condition.reason) == ("Ready", "NodeReady")
    assert len(device.runs) == 1 and len(mirror.requests) == fetched  # nothing fetched or run

    second = release("v1.32.0+k3s1", tmp_path / "v2")
    assert (await device.reconcile(mirror.spec(second))).status == "Ready"
    runs = device.runs
    assert [r["INSTALL_K3S_VERSION"] for r in runs] == ["v1.31.4+k3s1", "v1.32.0+k3s1"]
    version = await device.context().run([str(device.file("/usr/local/bin/k3s")), "--version"])
    assert version.stdout.startswith(b"k3s version v1.32.0+k3s1")


async def test_a_device_that_becomes_the_server_uninstalls_the_agent_first(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    assert (await device.reconcile(mirror.spec(found, role="agent"))).status == "Ready"
    units = device.file("/etc/systemd/system")
    assert (units / "k3s-agent.service").exists()
    assert (await device.reconcile(mirror.spec(found, role="server"))).status == "Ready"
    assert not (units / "k3s-agent.service").exists()
    assert not device.file("/usr/local/bin/k3s-agent-uninstall.sh").exists()
    assert (units / "k3s.service").exists()
    assert [r["INSTALL_K3S_EXEC"] for r in device.runs] == ["agent", "server"]
    assert "Uninstalling" in [c.reason for c in device.reports]


async def test_a_failing_installer_is_an_error_with_its_stderr_and_the_token_masked(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    found.install_script.write_text(
        '#!/bin/sh\necho "[ERROR]  cannot join $K3S_URL with $K3S_TOKEN" >&2\nexit 1\n'
    )
    condition = await device.reconcile(mirror.spec(found, role="agent"))
    assert (condition.status, condition.reason) == ("Error", "InstallFailed")
    assert f"[ERROR]  cannot join {URL} with ***" in condition.message
    assert TOKEN not in condition.message
    # Not recorded as installed: the next pass runs the installer again.
    assert not device.state.reconciler("k3s").exists()


async def test_a_bad_signature_is_refused_before_anything_is_fetched_or_run(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    forged = mirror.spec(found, signature=base64.b64encode(b"\0" * 64).decode())
    condition = await device.reconcile(forged)
    assert (condition.status, condition.reason) == ("Error", "BadSignature")
    assert mirror.requests == [] and device.runs == []
    assert not device.file("/usr/local/bin/k3s").exists()


async def test_a_sha256_mismatch_is_refused_before_anything_is_staged_or_run(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    # Signed by the server, but for other bytes than the file served.
    lying = mirror.spec(found, signed_sha256=hashlib.sha256(b"other bytes").hexdigest())
    condition = await device.reconcile(lying)
    assert (condition.status, condition.reason) == ("Error", "Sha256Mismatch")
    assert device.runs == [] and not device.file("/usr/local/bin/k3s").exists()


async def test_an_agent_waits_for_its_server_and_nothing_without_artifacts_runs(
    device: Device, mirror: Mirror, tmp_path: Path
) -> None:
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    spec = mirror.spec(found, role="agent")
    waiting = spec.model_copy(
        update={"k3s": spec.k3s.model_copy(update={"server_url": None, "token": None})}
    )
    condition = await device.reconcile(waiting)
    assert (condition.status, condition.reason) == ("Pending", "WaitingForServer")
    bare = Spec(k3s=K3sSpec(version="v1.31.4+k3s1", role="server"))
    condition = await device.reconcile(bare)
    assert (condition.status, condition.reason) == ("Error", "ArtifactsMissing")
    assert (await device.reconcile(Spec())).reason == "NotWanted"
    assert device.runs == [] and mirror.requests == []
