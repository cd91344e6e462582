"""A real ``corral-agent register`` in its own process against a real server over TLS."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration import facts, identity
from tests.support import BIN, Server, free_port


def write_seed(path: Path, server_url: str, token: str, **extra: object) -> Path:
    path.write_text(json.dumps({"server": server_url, "token": token, **extra}))
    return path


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "corral-agent"), *args], capture_output=True, text=True, timeout=120
    )


def test_agent_registers_with_real_facts_and_appears_in_device_list(
    server: Server, tmp_path: Path
) -> None:
    token = json.loads(server.corral("token", "create", "--uses", "1", "-o", "json").stdout)
    seed = write_seed(tmp_path / "seed.json", server.url, token["token"], labels={"site": "lab"})
    state = tmp_path / "state"
    result = agent("register", "--seed", str(seed), "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["created"] is True

    devices = json.loads(server.corral("device", "list", "-o", "json").stdout)
    assert [d["id"] for d in devices] == [answer["device_id"]]
    shown = json.loads(server.corral("device", "show", answer["device_id"], "-o", "json").stdout)
    here = facts.collect()
    assert shown["facts"]["cpu"]["count"] == os.cpu_count()
    assert shown["facts"]["memory"]["total_bytes"] == here.memory.total_bytes
    assert shown["facts"]["hostname"] == here.hostname
    assert [n["mac"] for n in shown["facts"]["nics"]] == [n.mac for n in here.nics]
    assert [d["name"] for d in shown["facts"]["disks"]] == [d.name for d in here.disks]
    assert shown["labels"] == {"site": "lab"}
    table = server.corral("device", "list").stdout
    assert answer["device_id"] in table

    # The key stays on the device, 0600; the certificate names the device.
    assert (state / "device-key.pem").stat().st_mode & 0o777 == 0o600
    cert = identity.cert_from_pem((state / "device.pem").read_bytes())
    assert identity.common_name(cert) == answer["device_id"]

    # Re-running is safe: same device, same key, no token use (the token had one).
    key_before = (state / "device-key.pem").read_bytes()
    again = agent("register", "--seed", str(seed), "--state-dir", str(state))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["device_id"] == answer["device_id"]
    assert (state / "device-key.pem").read_bytes() == key_before
    assert len(json.loads(server.corral("device", "list", "-o", "json").stdout)) == 1


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server with its own CA that records every request it receives."""
    ca = identity.CertificateAuthority.create("Impostor CA")
    key = identity.generate_key()
    (tmp_path / "imp.pem").write_bytes(
        identity.cert_to_pem(ca.issue_server(key, ["127.0.0.1"])) + identity.cert_to_pem(ca.cert)
    )
    (tmp_path / "imp-key.pem").write_bytes(identity.key_to_pem(key))
    seen: list[str] = []
    ca_pem = identity.cert_to_pem(ca.cert)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(f"GET {self.path}")
            self.send_response(200)
            self.end_headers()
            self.wfile.write(ca_pem)

        def do_POST(self) -> None:  # noqa: N802
            seen.append(f"POST {self.path}")
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "imp.pem", tmp_path / "imp-key.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_agent_fails_closed_when_the_ca_does_not_match_the_token(
    server: Server, impostor: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = impostor
    token = server.create_token()["token"]
    seed = write_seed(tmp_path / "seed.json", url, token)
    result = agent("register", "--seed", str(seed), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert "does not match" in result.stderr and result.stderr.count("\n") == 1
    # The token never left the device: only the public CA was fetched.
    assert seen == ["GET /api/v1/ca"]
    assert not (tmp_path / "state" / "device.pem").exists()


def test_bad_seed_is_one_line_error(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text('{"server": "http://plain", "token": "x"}')
    result = agent("register", "--seed", str(seed), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "https://" in result.stderr
    result = agent("register", "--seed", str(tmp_path / "missing.json"), "--state-dir", "x")
    assert result.returncode == 1 and "cannot read seed" in result.stderr
