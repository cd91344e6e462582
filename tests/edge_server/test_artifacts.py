"""The artifact mirror against a real server process: imports through the CLI and the API,
the update-signing key a registered device pins, refusals that store nothing, K3s releases
checked against their sums, spec resolution, and mTLS downloads that resume with Range."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_server.downloads import SEND_CHUNK
from node_image.agent.download import Downloader, DownloadOptions
from node_image.agent.state import StateDir
from registration.artifacts import ArtifactRef, verify_ref
from tests.support import BIN, Server, import_artifact, set_group
from tests.waiting import wait_until


@dataclass(frozen=True)
class Device:
    device_id: str
    state: Path

    @property
    def cert(self) -> tuple[str, str]:
        return str(self.state / "device.pem"), str(self.state / "device-key.pem")

    def pinned_key(self) -> str:
        return (self.state / "update-signing.pub").read_text().strip()


def register_agent(server: Server, tmp_path: Path, name: str = "dev") -> Device:
    """A real ``corral-agent register``: real facts (this machine's arch), a real state dir."""
    token = server.create_token()["token"]
    seed = tmp_path / f"{name}-seed.json"
    seed.write_text(json.dumps({"server": server.url, "token": token}))
    state = tmp_path / f"{name}-state"
    result = subprocess.run(
        [str(BIN / "corral-agent"), "register", "--seed", str(seed), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return Device(json.loads(result.stdout)["device_id"], state)


def corral_json(server: Server, *args: str) -> Any:
    return json.loads(server.corral(*args, "-o", "json").stdout)


def stored(server: Server) -> tuple[list[str], int]:
    """What the mirror holds: its files (temporary ones included) and its rows."""
    files = sorted(p.name for p in (server.data_dir / "artifacts").iterdir())
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT count(*) FROM artifacts").fetchone()[0]
    return files, int(rows)


def import_api(server: Server, data: bytes, **query: str) -> Any:
    return server.request(
        "POST",
        "/api/v1/artifacts",
        params=query,
        data=data,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )


def spec_of(server: Server, device_id: str) -> dict[str, Any]:
    data: dict[str, Any] = server.checked("GET", f"/api/v1/devices/{device_id}/spec")
    return data


def test_update_signing_key_is_ed25519_apart_from_the_ca_and_pinned_by_the_device(
    server: Server, tmp_path: Path
) -> None:
    key_path = server.data_dir / "pki" / "update-signing.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert pem != (server.data_dir / "pki" / "ca-key.pem").read_bytes()

    assert StateDir(tmp_path / "dev-state").update_signing_key() is None  # before
    dev = register_agent(server, tmp_path)
    raw = key.public_key().public_bytes_raw()
    assert base64.b64decode(dev.pinned_key()) == raw
    assert StateDir(dev.state).update_signing_key() == dev.pinned_key()
    # Registering again keeps it.
    seed = tmp_path / "dev-seed.json"
    rerun = subprocess.run(
        [str(BIN / "corral-agent"), "register", "--seed", str(seed), "--state-dir", str(dev.state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert base64.b64decode(dev.pinned_key()) == raw


def test_cli_imports_lists_shows_and_deletes_and_the_device_verifies_the_signature(
    server: Server, tmp_path: Path
) -> None:
    dev = register_agent(server, tmp_path)
    image = tmp_path / "rootfs.squashfs"
    image.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()

    art = corral_json(
        server, "artifact", "import", "--kind", "os-image", "--name", "os", "--version",
        "1.2.0", "--arch", "amd64", str(image),
    )  # fmt: skip
    assert (art["kind"], art["name"], art["version"], art["arch"]) == (
        "os-image", "os", "1.2.0", "amd64",
    )  # fmt: skip
    assert art["sha256"] == sha and art["size"] == image.stat().st_size
    # Content-addressed, and only there.
    assert stored(server) == ([sha], 1)
    assert (server.data_dir / "artifacts" / sha).read_bytes() == image.read_bytes()

    # The signature verifies with the key the device pinned at registration, and covers the
    # artifact's identity: the same bytes passed off as another version do not verify.
    ref = ArtifactRef.model_validate(
        {**{k: art[k] for k in ("id", "kind", "name", "version", "arch", "sha256", "size")},
         "signature": art["signature"], "url": f"/api/v1/artifacts/{art['id']}/content"}
    )  # fmt: skip
    assert verify_ref(dev.pinned_key(), ref)
    assert not verify_ref(dev.pinned_key(), ref.model_copy(update={"version": "9.9.9"}))

    listed = corral_json(server, "artifact", "list")
    assert [a["id"] for a in listed] == [art["id"]]
    table = server.corral("artifact", "list").stdout
    assert art["id"] in table and "1.2.0" in table and "amd64" in table
    shown = server.corral("artifact", "show", art["id"]).stdout
    assert sha in shown and art["signature"] in shown

    # The same identity again is refused; the first one stays.
    dup = server.corral(
        "artifact", "import", "--kind", "os-image", "--name", "os", "--version", "1.2.0",
        "--arch", "amd64", str(image), check=False,
    )  # fmt: skip
    assert dup.returncode != 0 and "artifact_exists" in dup.stderr
    assert len(dup.stderr.strip().splitlines()) == 1

    deleted = corral_json(server, "artifact", "delete", art["id"])
    assert deleted["status"] == "deleted"
    assert stored(server) == ([], 0)
    gone = server.corral("artifact", "show", art["id"], check=False)
    assert gone.returncode != 0 and "not_found" in gone.stderr


def test_identical_bytes_share_one_file_which_goes_with_the_last_artifact(
    server: Server,
) -> None:
    data = b"same bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    a = import_artifact(server, data, "file", "a", "1")
    b = import_artifact(server, data, "file", "b", "1")
    assert stored(server) == ([sha], 2)
    assert server.api("DELETE", f"/api/v1/artifacts/{a['id']}").status_code == 200
    assert stored(server) == ([sha], 1)
    assert server.api("DELETE", f"/api/v1/artifacts/{b['id']}").status_code == 200
    assert stored(server) == ([], 0)


@pytest.mark.parametrize(
    "query, code",
    [
        ({"kind": "file", "name": "../../etc/passwd", "version": "1"}, "invalid_document"),
        ({"kind": "file", "name": "x", "version": "../1"}, "invalid_document"),
        ({"kind": "file", "name": "x/y", "version": "1"}, "invalid_document"),
        ({"kind": "file", "name": "x", "version": "1", "arch": "../amd64"}, "invalid_document"),
        ({"kind": "nonsense", "name": "x", "version": "1"}, "invalid_document"),
        ({"kind": "file", "name": "x", "version": "1", "sha256": "0" * 64}, "sha256_mismatch"),
    ],
)
def test_bad_imports_are_refused_and_store_nothing(
    shared_server: Server, query: dict[str, str], code: str
) -> None:
    before = stored(shared_server)
    answer = import_api(shared_server, b"payload" * 4096, **query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == code
    assert stored(shared_server) == before
    assert not list((shared_server.data_dir.parent).glob("**/etc/passwd"))


def test_a_truncated_upload_is_refused_and_stores_nothing(server: Server) -> None:
    size, sent = 4 * 1024 * 1024, 2 * 1024 * 1024
    context = ssl.create_default_context(cafile=str(server.ca))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                (
                    "POST /api/v1/artifacts?kind=file&name=cut&version=1 HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{server.port}\r\n"
                    f"Authorization: Bearer {server.admin_token}\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    f"Content-Length: {size}\r\n\r\n"
                ).encode()
            )
            tls.sendall(os.urandom(sent))
    wait_until("the server to refuse the cut upload", lambda: "truncated upload" in server.log())
    assert stored(server) == ([], 0)
    assert server.checked("GET", "/api/v1/artifacts")["items"] == []
    # Missing Content-Length: refused before a byte is stored.
    chunked = server.request(
        "POST",
        "/api/v1/artifacts",
        params={"kind": "file", "name": "x", "version": "1"},
        data=iter([b"a" * 1000, b"b" * 1000]),
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert chunked.status_code == 400 and chunked.json()["error"] == "length_required"
    assert stored(server) == ([], 0)


def fake_k3s_release(directory: Path, version: str, wrong: str | None = None) -> dict[str, bytes]:
    """A release directory shaped like upstream's, with stand-in contents."""
    directory.mkdir(parents=True)
    files = {
        "install.sh": b"#!/bin/sh\n# stand-in for the K3s installer\nexit 0\n",
        "k3s": b"\x7fELF stand-in k3s " + version.encode() + os.urandom(200_000),
        "k3s-airgap-images-amd64.tar.zst": b"\x28\xb5\x2f\xfd" + os.urandom(300_000),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    lines = []
    for name in ("k3s", "k3s-airgap-images-amd64.tar", "k3s-airgap-images-amd64.tar.zst"):
        data = files.get(name, b"not shipped here")
        digest = hashlib.sha256(data + (b"tampered" if name == wrong else b"")).hexdigest()
        lines.append(f"{digest}  {name}")
    (directory / "sha256sum-amd64.txt").write_text("\n".join(lines) + "\n")
    return files


def test_import_k3s_refuses_a_release_with_a_wrong_sha256_and_stores_nothing(
    server: Server, tmp_path: Path
) -> None:
    version = "v1.31.4+k3s1"
    fake_k3s_release(tmp_path / "bad", version, wrong="k3s")
    result = server.corral(
        "artifact", "import-k3s", "--version", version, "--from", str(tmp_path / "bad"),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "k3s: sha256" in lines[0] and "does not match" in lines[0]
    assert stored(server) == ([], 0)

    files = fake_k3s_release(tmp_path / "good", version)
    imported = corral_json(
        server, "artifact", "import-k3s", "--version", version, "--from", str(tmp_path / "good")
    )
    got = {(a["kind"], a["arch"]): a for a in imported}
    assert set(got) == {("k3s-install", None), ("k3s-binary", "amd64"), ("k3s-images", "amd64")}
    assert all(a["version"] == version for a in imported)
    assert got[("k3s-binary", "amd64")]["sha256"] == hashlib.sha256(files["k3s"]).hexdigest()
    assert len(stored(server)[0]) == 3


def test_specs_resolve_artifacts_by_version_and_arch_and_follow_imports_and_deletes(
    server: Server, tmp_path: Path
) -> None:
    dev = register_agent(server, tmp_path)
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    set_group(server, "fleet", "", {"os": {"version": "2.0"}, "k3s": {"version": "v1.31.4+k3s1"}})
    before = spec_of(server, dev.device_id)
    assert before["spec"]["os"]["image"] is None
    assert before["spec"]["k3s"]["binary"] is None

    image = import_api(server, b"os 2.0" * 10000, kind="os-image", name="os", version="2.0")
    assert image.status_code == 201, image.text
    assert image.json()["devices_changed"] == 1
    other_version = import_api(server, b"os 3.0", kind="os-image", name="os", version="3.0")
    other_arch = import_api(
        server, b"k3s for another arch", kind="k3s-binary", name="k3s", version="v1.31.4+k3s1",
        arch="s390x" if arch != "s390x" else "riscv64",
    )  # fmt: skip
    assert other_version.status_code == other_arch.status_code == 201
    binary = import_api(
        server, b"k3s binary", kind="k3s-binary", name="k3s", version="v1.31.4+k3s1", arch=arch
    )
    script = import_api(server, b"#!/bin/sh\n", kind="k3s-install", name="k3s",
                        version="v1.31.4+k3s1")  # fmt: skip

    after = spec_of(server, dev.device_id)
    assert after["generation"] > before["generation"]
    ref = ArtifactRef.model_validate(after["spec"]["os"]["image"])
    assert ref.id == image.json()["id"] and ref.version == "2.0"
    assert ref.url == f"/api/v1/artifacts/{ref.id}/content"
    assert verify_ref(dev.pinned_key(), ref)
    k3s = after["spec"]["k3s"]
    assert k3s["binary"]["id"] == binary.json()["id"]  # this device's arch, not the other
    assert k3s["install_script"]["id"] == script.json()["id"]
    assert k3s["images"] is None  # not imported: nothing to name
    for kind in ("binary", "install_script"):
        assert verify_ref(dev.pinned_key(), ArtifactRef.model_validate(k3s[kind]))

    # A newer import of the same version wins; deleting it falls back to the older one.
    newer = import_api(server, b"os 2.0 rebuilt", kind="os-image", name="os-rebuilt",
                       version="2.0")  # fmt: skip
    assert spec_of(server, dev.device_id)["spec"]["os"]["image"]["id"] == newer.json()["id"]
    server.checked("DELETE", f"/api/v1/artifacts/{newer.json()['id']}")
    assert spec_of(server, dev.device_id)["spec"]["os"]["image"]["id"] == image.json()["id"]
    server.checked("DELETE", f"/api/v1/artifacts/{image.json()['id']}")
    assert spec_of(server, dev.device_id)["spec"]["os"]["image"] is None


@pytest.mark.parametrize(
    "spec",
    [
        {"os": {"version": "1", "image": {"id": "x"}}},
        {"k3s": {"token": "K10stolen"}},
        {"k3s": {"server_url": "https://evil:6443"}},
        {"k3s": {"binary": {"id": "x"}}},
        {"k3s": {"install_script": {"id": "x"}}},
        {"k3s": {"images": {"id": "x"}}},
    ],
)
def test_operators_cannot_set_server_resolved_fields(
    shared_server: Server, spec: dict[str, Any]
) -> None:
    group = shared_server.api("POST", "/api/v1/groups", {"name": "g", "spec": spec})
    assert group.status_code == 400, group.text
    assert "filled by the server" in group.json()["detail"]
    override = shared_server.api("PUT", "/api/v1/devices/dev-any/override", spec)
    assert override.status_code == 400, override.text


# --- downloads over mTLS, cut and resumed


UPSTREAM_RCVBUF = 256 << 10


def in_flight_bound() -> int:
    """Bytes a server can write into a connection that is then cut and never read again:
    its send buffer at most (tcp_wmem's max), the proxy's receive buffer (the kernel doubles
    SO_RCVBUF) and the proxy's reader (two 64 KiB reads)."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return wmem_max + 2 * UPSTREAM_RCVBUF + 2 * 65536


class CuttingProxy:
    """A TCP proxy in front of the server (TLS passes through untouched) that cuts its first
    connection once ``cut_after`` bytes have gone to the client."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.connections = 0
        self.to_client = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.cut_after if self.connections == 1 else None
        # A small, fixed receive buffer towards the server (no autotuning up to tcp_rmem's
        # max): what the server can have written past the cut is then bounded, see
        # :func:`in_flight_bound`.
        upstream = socket.socket()
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)
        upstream.setblocking(False)
        await asyncio.get_running_loop().sock_connect(upstream, ("127.0.0.1", self.upstream_port))
        up_r, up_w = await asyncio.open_connection(sock=upstream)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, down: bool) -> None:
            sent = 0
            try:
                while data := await r.read(65536):
                    if down and limit is not None and sent + len(data) >= limit:
                        data = data[: limit - sent]
                        w.write(data)
                        self.to_client += len(data)
                        await w.drain()
                        raise ConnectionAbortedError("cut")
                    w.write(data)
                    await w.drain()
                    sent += len(data)
                    if down:
                        self.to_client += len(data)
            finally:
                for writer in (client_w, up_w):
                    writer.transport.abort()

        await asyncio.gather(
            pipe(client_r, up_w, False), pipe(up_r, client_w, True), return_exceptions=True
        )


@pytest.fixture
def device_tls(server: Server, tmp_path: Path) -> Iterator[tuple[Device, ssl.SSLContext]]:
    dev = register_agent(server, tmp_path)
    context = ssl.create_default_context(cafile=str(server.ca))
    context.load_cert_chain(*dev.cert)
    yield dev, context


async def test_a_download_cut_at_half_resumes_with_range_and_costs_one_size(
    server: Server, device_tls: tuple[Device, ssl.SSLContext], tmp_path: Path
) -> None:
    dev, context = device_tls
    size = 48 * 1024 * 1024
    blob = tmp_path / "image"
    blob.write_bytes(os.urandom(size))
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    imported = await asyncio.to_thread(
        import_api, server, blob.read_bytes(), kind="os-image", name="os", version="5.0"
    )
    assert imported.status_code == 201
    ref = imported.json()

    proxy = CuttingProxy(server.port, cut_after=size // 2)
    await proxy.start()
    try:
        options = DownloadOptions(retry_delay=0.1, reserve=0)
        async with Downloader.open(context, options) as downloader:
            got = await downloader.fetch(
                f"https://127.0.0.1:{proxy.port}/api/v1/artifacts/{ref['id']}/content",
                tmp_path / "downloaded",
                sha,
                size,
            )
    finally:
        await proxy.stop()
    assert got.requests == 2 and got.sha256 == sha
    assert (tmp_path / "downloaded").read_bytes() == blob.read_bytes()
    assert proxy.connections == 2

    stats = (await asyncio.to_thread(server.checked, "GET", "/api/v1/stats"))["artifacts"]
    assert stats["requests"] == 2 and stats["range_requests"] == 1 and stats["completed"] == 1
    # What the server wrote: the first half (plus what sat in socket buffers at the cut, and
    # the chunk being written), then the rest from the Range: one size plus the buffers, not
    # one and a half (a resend of the first half would be 24 MiB more).
    assert size <= stats["bytes_served"] <= size + in_flight_bound() + SEND_CHUNK, stats
    assert size <= proxy.to_client < 1.05 * size


def test_a_revoked_device_is_refused_and_other_devices_may_download(
    server: Server, tmp_path: Path
) -> None:
    data = b"firmware" * 1000
    art = import_artifact(server, data, "file", "fw", "1")
    path = f"/api/v1/artifacts/{art['id']}/content"
    a = register_agent(server, tmp_path, "a")
    b = register_agent(server, tmp_path, "b")
    assert server.request("GET", path, cert=a.cert).content == data
    server.checked("DELETE", f"/api/v1/devices/{a.device_id}")
    refused = server.request("GET", path, cert=a.cert)
    assert refused.status_code == 403 and refused.json()["error"] == "certificate_revoked"
    assert server.request("GET", path, cert=b.cert).content == data
    assert server.request("GET", path).status_code == 401  # neither device nor operator


def test_import_k3s_is_all_or_nothing_when_the_server_refuses_one_file(
    server: Server, tmp_path: Path
) -> None:
    version = "v1.31.5+k3s1"
    taken = import_artifact(server, b"older images", "k3s-images", "k3s", version, "amd64")
    fake_k3s_release(tmp_path / "release", version)
    result = server.corral(
        "artifact", "import-k3s", "--version", version, "--from", str(tmp_path / "release"),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "artifact_exists" in result.stderr
    # The install script and binary it imported first were deleted again.
    assert [a["id"] for a in server.checked("GET", "/api/v1/artifacts")["items"]] == [taken["id"]]
    assert stored(server) == ([taken["sha256"]], 1)
