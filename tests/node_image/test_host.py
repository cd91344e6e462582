"""The Host seam: a simulated device stays inside its directory and keeps stable facts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from node_image.errors import AgentError
from node_image.host import Host, LinuxHost, SimulatedHost
from registration.protocol import Facts


def test_simulated_host_keeps_files_under_its_rootfs(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    assert isinstance(host, Host) and host.durable is False

    host.write_file("/etc/corral-test/app.conf", b"key=value\n", 0o640)
    inside = tmp_path / "dev" / "rootfs" / "etc" / "corral-test" / "app.conf"
    assert inside.read_bytes() == b"key=value\n"
    assert inside.stat().st_mode & 0o7777 == 0o640
    assert not Path("/etc/corral-test").exists()

    found = host.read_file("/etc/corral-test/app.conf", limit=100)
    assert found is not None and found.content == b"key=value\n" and found.mode == 0o640
    # Only limit + 1 bytes are read: enough to see that a longer file differs.
    cut = host.read_file("/etc/corral-test/app.conf", limit=3)
    assert cut is not None and cut.content == b"key="
    assert host.read_file("/etc/corral-test/missing", limit=10) is None

    assert host.remove_file("/etc/corral-test/app.conf") is True
    assert host.remove_file("/etc/corral-test/app.conf") is False
    assert not inside.exists()


def test_simulated_host_refuses_paths_that_could_leave_its_directory(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    for bad in ("/etc/../../outside", "relative/path", "/etc//x", "/etc/x/"):
        with pytest.raises(AgentError, match="absolute and normalised"):
            host.write_file(bad, b"", 0o644)
    assert not (tmp_path / "outside").exists()


def test_reading_a_directory_as_a_file_is_an_oserror(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    host.write_file("/etc/d/f", b"", 0o644)
    with pytest.raises(IsADirectoryError):
        host.read_file("/etc/d", limit=10)


def test_simulated_facts_are_stable_per_directory_and_differ_between_devices(
    tmp_path: Path,
) -> None:
    first = SimulatedHost(tmp_path / "a").collect_facts()
    again = SimulatedHost(tmp_path / "a").collect_facts()
    other = SimulatedHost(tmp_path / "b").collect_facts()
    assert first == again
    assert first.dmi["product_uuid"] != other.dmi["product_uuid"]
    assert first.hostname != other.hostname and first.hostname.startswith("sim-")
    assert first.cpu.count == 2 and first.memory.total_bytes == 2 * 1024**3
    assert [n.name for n in first.nics] == ["eth0"]
    assert first.nics[0].mac is not None and first.nics[0].mac.startswith("02:")
    assert first.nics[0].mac != other.nics[0].mac
    # The facts are valid protocol documents.
    assert Facts.model_validate_json(first.model_dump_json()) == first
    assert (tmp_path / "a" / "machine.json").exists()


def test_linux_host_acts_on_the_real_filesystem_and_reports_real_facts(tmp_path: Path) -> None:
    host = LinuxHost()
    assert isinstance(host, Host) and host.durable is True
    target = tmp_path / "real" / "file.conf"
    host.write_file(str(target), b"real\n", 0o600)
    assert target.read_bytes() == b"real\n" and target.stat().st_mode & 0o777 == 0o600
    assert host.remove_file(str(target)) is True
    assert host.collect_facts().hostname == socket.gethostname()
