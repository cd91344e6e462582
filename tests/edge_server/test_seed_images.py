"""Seed ISOs against a real server process: ``corral image seed`` checks the server's CA
against the token, ``corral image import-base`` stores a base ISO (refusing one without a
seed slot), and ``GET /api/v1/tokens/{id}/seed.iso`` streams, to a real curl, the same bytes
the CLI writes for the same seed, with Range, and clear refusals."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from edge_server.sealing import SealError, TokenSealer
from node_image.image.layout import SEED_PATH
from registration import tokens
from tests.node_image.seed_iso import make_iso
from tests.support import Server, free_port


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("iso"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_seed(iso: Path) -> dict[str, Any]:
    image = pycdlib.PyCdlib()
    image.open(str(iso))
    try:
        out = io.BytesIO()
        image.get_file_from_iso_fp(out, rr_path=SEED_PATH)
    finally:
        image.close()
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def curl(server: Server, path: str, out: Path, *extra: str) -> tuple[int, dict[str, str]]:
    """``curl`` as an operator: the status and the (lower-cased) headers of the answer."""
    headers = out.with_suffix(".headers")
    result = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--cacert", str(server.ca),
            "-H", f"Authorization: Bearer {server.admin_token}",
            "-D", str(headers), "-o", str(out), "-w", "%{http_code}",
            *extra, server.url + path,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = headers.read_text().splitlines()[1:]
    return int(result.stdout), {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines) if v
    }


def error_of(body: Path) -> tuple[str, str]:
    doc = json.loads(body.read_text())
    return doc["error"], doc["detail"]


def seed_cli(server: Server, base: Path, out: Path, token: str, *extra: str) -> Any:
    return server.corral(
        "image", "seed", "--base", str(base), "--out", str(out), "--server", server.url,
        "--token", token, *extra, check=False,
    )  # fmt: skip


def test_cli_seed_checks_the_servers_ca_against_the_token(
    shared_server: Server, base_iso: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seeded.iso"
    token = shared_server.create_token()["token"]
    done = seed_cli(shared_server, base_iso, out, token, "--label", "site=lab")
    assert done.returncode == 0, done.stderr
    assert read_seed(out)["token"] == token

    out.unlink()
    other_ca = str(tokens.generate("ab" * 32))
    refused = seed_cli(shared_server, base_iso, out, other_ca)
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1 and "does not match the token's" in refused.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []

    gone = shared_server.corral(
        "image", "seed", "--base", str(base_iso), "--out", str(out), "--server",
        f"https://127.0.0.1:{free_port()}", "--token", token, check=False,
    )  # fmt: skip
    assert gone.returncode != 0
    assert "cannot fetch the CA from https://127.0.0.1" in gone.stderr
    assert "--no-verify-server" in gone.stderr
    assert not out.exists()


def test_import_base_then_download_the_same_bytes_the_cli_writes(
    shared_server: Server, base_iso: Path, tmp_path: Path
) -> None:
    server = shared_server
    created = server.create_token(labels={"site": "lab"})
    path = f"/api/v1/tokens/{created['id']}/seed.iso"

    # 1. Before any base ISO: 409 no_base_image, telling what to run.
    status, _ = curl(server, path, tmp_path / "none.json")
    assert status == 409
    code, detail = error_of(tmp_path / "none.json")
    assert code == "no_base_image" and "corral image import-base" in detail

    # 2. A file without a seed slot is refused, by the CLI and by the server; nothing stored.
    plain = make_iso(tmp_path, "plain.iso", slot=None)
    refused = server.corral("image", "import-base", str(plain), check=False)
    assert refused.returncode != 0 and "has no seed slot" in refused.stderr
    answer = server.request(
        "POST", "/api/v1/artifacts", data=plain.read_bytes(),
        params={"kind": "base-iso", "name": "plain.iso", "version": "1"},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )  # fmt: skip
    assert answer.status_code == 400 and answer.json()["error"] == "no_seed_slot", answer.text
    assert sorted(p.name for p in (server.data_dir / "artifacts").iterdir()) == []

    # 3. The real base ISO goes in through the CLI.
    imported = json.loads(server.corral("image", "import-base", str(base_iso), "-o", "json").stdout)
    assert imported["kind"] == "base-iso" and imported["sha256"] == sha256(base_iso)

    # 4. curl downloads exactly what the CLI writes for the same seed.
    status, headers = curl(server, path + "?label=rack%3Dr1", tmp_path / "served.iso")
    assert status == 200
    assert (
        headers["content-disposition"] == f'attachment; filename="corral-seed-{created["id"]}.iso"'
    )
    assert int(headers["content-length"]) == base_iso.stat().st_size
    served = read_seed(tmp_path / "served.iso")
    assert served == {"server": server.url, "token": created["token"], "labels": {"rack": "r1"}}
    local = tmp_path / "local.iso"
    done = seed_cli(server, base_iso, local, created["token"], "--label", "rack=r1")
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "served.iso") == sha256(local)

    # 5. Range: a part, and a cut download resumed by curl (-C -).
    status, headers = curl(server, path + "?label=rack%3Dr1", tmp_path / "part", "-r", "1000-")
    assert status == 206
    assert (
        headers["content-range"] == f"bytes 1000-{local.stat().st_size - 1}/{local.stat().st_size}"
    )
    assert (tmp_path / "part").read_bytes() == local.read_bytes()[1000:]
    cut = tmp_path / "resumed.iso"
    cut.write_bytes(local.read_bytes()[: 3 * 1024 * 1024 + 17])
    status, _ = curl(server, path + "?label=rack%3Dr1", cut, "-C", "-")
    assert status == 206 and sha256(cut) == sha256(local)


def test_seed_iso_refusals(shared_server: Server, base_iso: Path, tmp_path: Path) -> None:
    server = shared_server
    if not server.checked("GET", "/api/v1/artifacts", params={"kind": "base-iso"})["items"]:
        server.corral("image", "import-base", str(base_iso))
    token = server.create_token()
    path = f"/api/v1/tokens/{token['id']}/seed.iso"
    body = tmp_path / "answer"

    def refused(url: str, status: int, code: str) -> str:
        got, _ = curl(server, url, body)
        assert got == status, body.read_text()[:300]
        error, detail = error_of(body)
        assert error == code, detail
        return detail

    refused(path + "?install_disk=/etc/passwd", 400, "bad_seed")
    refused(path + "?ip=10.0.0.5", 400, "bad_seed")
    refused(path + "?server=http://x", 400, "bad_seed")
    refused(path + "?colour=blue", 400, "bad_request")
    refused("/api/v1/tokens/nosuchtokn/seed.iso", 404, "not_found")
    ok = server.api("GET", path, stream=True)
    assert ok.status_code == 200
    ok.close()
    assert server.request("GET", path).status_code == 401

    # A token made before secrets were sealed (its row has none) cannot be rebuilt.
    older = server.create_token()
    with sqlite3.connect(server.db_path) as db:
        db.execute("UPDATE reg_tokens SET secret_sealed = NULL WHERE id = ?", (older["id"],))
    detail = refused(f"/api/v1/tokens/{older['id']}/seed.iso", 409, "token_not_sealed")
    assert "create a new token" in detail

    server.checked("DELETE", f"/api/v1/tokens/{token['id']}")
    refused(path, 410, "token_revoked")


def test_the_sealed_secret_rebuilds_the_token(shared_server: Server, tmp_path: Path) -> None:
    """What the server keeps of a token: its hash, and the secret sealed, never in clear."""
    created = shared_server.create_token()
    secret = created["token"].rsplit(".", 1)[1]
    with sqlite3.connect(f"file:{shared_server.db_path}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT secret_hash, secret_sealed FROM reg_tokens WHERE id = ?", (created["id"],)
        ).fetchone()
    assert row[0] == tokens.hash_secret(secret)
    assert row[1].startswith("v1:") and secret not in row[1]
    key = shared_server.data_dir / "pki" / "token-seal.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert TokenSealer.load(key).open(created["id"], row[1]) == secret
    with pytest.raises(SealError):  # bound to its token: another row's id does not open it
        TokenSealer.load(key).open("othertoken", row[1])
