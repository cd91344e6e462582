"""``corral artifact import-k3s --download`` against a K3s release served over HTTPS from
127.0.0.1 (its own CA; the URLs given by ``--release-url`` / ``$CORRAL_K3S_RELEASE_URL`` and
``$CORRAL_K3S_INSTALL_SCRIPT_URL``): a whole release is imported; a wrong sha256, a download
cut short and a missing file are one line on stderr with nothing stored, no ``.part`` left
and the temporary directory removed."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest

from registration import identity
from tests.server_process import CORRAL, tree_env
from tests.support import Server, free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k3s"
VERSION = "v1.31.4+k3s1"


@dataclass
class Release:
    """What the fake release server serves (path → bytes) and what it was asked for."""

    url: str
    ca: Path
    files: dict[str, bytes] = field(default_factory=dict)
    #: Paths whose body is cut at half (the Content-Length still says the whole size).
    cut: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    def publish(self, *, wrong: str | None = None) -> dict[str, bytes]:
        """Upstream's layout: ``/releases/TAG/FILE`` and ``/scripts/TAG/install.sh``."""
        files = {
            "k3s": (FIXTURES / "k3s").read_bytes() + os.urandom(300_000),
            "k3s-airgap-images-amd64.tar.zst": b"\x28\xb5\x2f\xfd" + os.urandom(400_000),
        }
        sums = "".join(
            f"{hashlib.sha256(data + (b'x' if name == wrong else b'')).hexdigest()}  {name}\n"
            for name, data in files.items()
        )
        self.files = {f"/releases/{VERSION}/{name}": data for name, data in files.items()}
        self.files[f"/releases/{VERSION}/sha256sum-amd64.txt"] = sums.encode()
        self.files[f"/scripts/{VERSION}/install.sh"] = (FIXTURES / "install.sh").read_bytes()
        return files


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Release]:
    ca = identity.CertificateAuthority.create("Release mirror CA")
    key = identity.generate_key()
    (tmp_path / "mirror.pem").write_bytes(identity.cert_to_pem(ca.issue_server(key, ["127.0.0.1"])))
    (tmp_path / "mirror-key.pem").write_bytes(identity.key_to_pem(key))
    (tmp_path / "mirror-ca.pem").write_bytes(identity.cert_to_pem(ca.cert))
    port = free_port()
    served = Release(f"https://127.0.0.1:{port}", tmp_path / "mirror-ca.pem")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = unquote(self.path)
            served.seen.append(path)
            data = served.files.get(path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if path in served.cut else data)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "mirror.pem", tmp_path / "mirror-key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def import_k3s(
    server: Server, release: Release, tmp: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``corral artifact import-k3s --download``, trusting the mirror's CA, with ``tmp`` as
    its temporary directory; the install script's URL from the environment."""
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [*CORRAL, "--data-dir", str(server.data_dir), "artifact", "import-k3s"]
        + ["--version", VERSION, "--download", "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=tree_env(
            REQUESTS_CA_BUNDLE=str(release.ca),
            TMPDIR=str(tmp),
            CORRAL_K3S_INSTALL_SCRIPT_URL=f"{release.url}/scripts/{{version}}/install.sh",
            **env,
        ),
    )


def stored(server: Server) -> tuple[list[str], int]:
    files = sorted(p.name for p in (server.data_dir / "artifacts").iterdir())
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT count(*) FROM artifacts").fetchone()[0]
    return files, int(rows)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_downloaded_release_is_imported_whole_and_the_temporary_directory_goes(
    server: Server, release: Release, tmp_path: Path
) -> None:
    files = release.publish()
    tmp = tmp_path / "tmp"
    result = import_k3s(server, release, tmp, "--release-url", f"{release.url}/releases/")
    assert result.returncode == 0, result.stderr
    got = {(a["kind"], a["arch"]): a for a in json.loads(result.stdout)}
    assert set(got) == {("k3s-install", None), ("k3s-binary", "amd64"), ("k3s-images", "amd64")}
    script = (FIXTURES / "install.sh").read_bytes()
    assert got[("k3s-install", None)]["sha256"] == hashlib.sha256(script).hexdigest()
    assert got[("k3s-binary", "amd64")]["sha256"] == hashlib.sha256(files["k3s"]).hexdigest()
    assert all(a["version"] == VERSION for a in got.values())
    assert len(stored(server)[0]) == 3
    # Upstream's names, the tag URL-quoted (the server saw it unquoted); nothing left in tmp.
    assert sorted(release.seen) == sorted(release.files)
    assert list(tmp.iterdir()) == []


def test_a_release_whose_sums_do_not_match_is_refused_and_nothing_is_stored(
    server: Server, release: Release, tmp_path: Path
) -> None:
    release.publish(wrong="k3s-airgap-images-amd64.tar.zst")
    tmp = tmp_path / "tmp"
    url = {"CORRAL_K3S_RELEASE_URL": f"{release.url}/releases"}  # the environment's turn
    line = one_line(import_k3s(server, release, tmp, **url))
    assert "k3s-airgap-images-amd64.tar.zst: sha256" in line and "does not match" in line
    assert stored(server) == ([], 0)
    assert len(release.seen) == 4 and list(tmp.iterdir()) == []


def test_a_download_cut_short_or_missing_is_one_clear_line_and_nothing_is_kept(
    server: Server, release: Release, tmp_path: Path
) -> None:
    files = release.publish()
    binary = f"/releases/{VERSION}/k3s"
    release.cut.add(binary)
    tmp, into = tmp_path / "tmp", tmp_path / "into"
    base = ("--release-url", f"{release.url}/releases")
    line = one_line(import_k3s(server, release, tmp, *base))
    size = len(files["k3s"])
    assert "was cut short after" in line and f"of {size} bytes" in line and "k3s" in line
    assert stored(server) == ([], 0) and list(tmp.iterdir()) == []

    # Into a directory of the operator's: the files before the cut stay, no .part.
    one_line(import_k3s(server, release, tmp, *base, "--from", str(into)))
    assert sorted(p.name for p in into.iterdir()) == ["install.sh"]
    assert stored(server) == ([], 0)

    release.cut.clear()
    del release.files[f"/releases/{VERSION}/sha256sum-amd64.txt"]
    line = one_line(import_k3s(server, release, tmp, *base))
    assert "sha256sum-amd64.txt: HTTP 404" in line and line.startswith("corral")
    assert stored(server) == ([], 0) and list(tmp.iterdir()) == []

    line = one_line(import_k3s(server, release, tmp, "--release-url", "file:///etc"))
    assert "not an http(s) URL" in line
