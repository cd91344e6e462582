"""registration.atomic: the one atomic write both sides use (agent state, server keys, CRL)."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_server import addresses
from edge_server.pki import write_private, write_public
from registration.atomic import TMP_MARKER, atomic_write, remove_stale_temps


def test_concurrent_crl_writers_leave_one_whole_version(tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    versions = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=write_public, args=(path, v)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in versions  # whole, never a mix or a truncation
    assert [p.name for p in tmp_path.iterdir()] == ["crl.pem"]  # no temp file left


def test_secrets_are_0600_and_public_files_0644(tmp_path: Path) -> None:
    write_private(tmp_path / "key.pem", b"secret")
    write_public(tmp_path / "ca.pem", b"cert")
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.pem").stat().st_mode & 0o777 == 0o644


def test_stale_temps_of_an_interrupted_write_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    atomic_write(path, b"{}")
    (tmp_path / f".outbox.json{TMP_MARKER}123-abcd").write_bytes(b"half")
    (tmp_path / f".other.json{TMP_MARKER}123-abcd").write_bytes(b"not ours")
    assert remove_stale_temps(path) == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".other.json{TMP_MARKER}123-abcd", "outbox.json"]


def test_wildcard_listeners_are_reached_on_loopback_and_not_named() -> None:
    for host in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        assert addresses.connect_host(host) == "127.0.0.1"
        assert host not in addresses.server_names(host)
    assert addresses.connect_host("fd00::1") == "[fd00::1]"
    assert addresses.connect_host("edge.example") == "edge.example"
    names = addresses.server_names("10.0.0.5", ["corral.lan", "localhost"])
    assert names[:3] == ["localhost", "127.0.0.1", "::1"]
    assert "10.0.0.5" in names and names.count("localhost") == 1 and names[-1] == "corral.lan"
