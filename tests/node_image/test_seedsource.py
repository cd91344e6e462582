"""Where a blank device finds its seed: a CORRAL-labelled ext4 partition on a real loop
device, ``corral.seed=`` on the kernel command line, the live boot medium, and a blank slot
that waits until a seed is written."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node_image.agent import seedsource
from node_image.agent.transport import Backoff
from node_image.host import Kernel, LinuxHost, SimulatedHost
from node_image.image.layout import LIVE_MEDIUM, SEED_PATH, SEED_SLOT_SIZE
from registration import tokens

FINGERPRINT = "ab" * 32


def seed_bytes(server: str = "https://127.0.0.1:8443", **extra: object) -> bytes:
    token = str(tokens.generate(FINGERPRINT))
    return json.dumps({"server": server, "token": token, **extra}).encode()


def slot(content: bytes) -> bytes:
    """As the image carries it: the document padded with spaces to the slot's size."""
    return content + b" " * (SEED_SLOT_SIZE - len(content))


def put(host: SimulatedHost, path: str, content: bytes) -> None:
    target = host.resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


LIVE_SEED = str(LIVE_MEDIUM) + SEED_PATH


def test_seed_on_the_live_boot_medium_is_found(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "host")
    put(host, LIVE_SEED, slot(seed_bytes(labels={"site": "live"})))
    found = seedsource.find(host, seedsource.AUTO, partitions=False)
    assert found is not None
    assert found.where == LIVE_SEED
    assert found.seed.labels == {"site": "live"}


def test_kernel_cmdline_seed_comes_before_the_boot_medium(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "host")
    put(host, LIVE_SEED, slot(seed_bytes(labels={"site": "live"})))
    put(host, "/srv/my-seed.json", seed_bytes(labels={"site": "cmdline"}))
    put(
        host, "/proc/cmdline", b"BOOT_IMAGE=/live/vmlinuz boot=live corral.seed=/srv/my-seed.json\n"
    )
    found = seedsource.find(host, seedsource.AUTO, partitions=False)
    assert found is not None
    assert found.seed.labels == {"site": "cmdline"}
    assert found.where.startswith("/srv/my-seed.json")


def test_an_explicit_seed_that_exists_comes_first_and_a_missing_one_is_passed_over(
    tmp_path: Path,
) -> None:
    host = SimulatedHost(tmp_path / "host")
    put(host, LIVE_SEED, slot(seed_bytes(labels={"site": "live"})))
    explicit = tmp_path / "seed.json"  # a path of the machine running the agent
    explicit.write_bytes(seed_bytes(labels={"site": "etc"}))
    found = seedsource.find(host, str(explicit), partitions=False)
    assert found is not None and found.seed.labels == {"site": "etc"}
    found = seedsource.find(host, str(tmp_path / "missing.json"), partitions=False)
    assert found is not None and found.seed.labels == {"site": "live"}


def test_a_blank_slot_is_no_seed(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "host")
    put(host, LIVE_SEED, slot(b"{}"))
    assert seedsource.find(host, seedsource.AUTO, partitions=False) is None


def test_a_blank_slot_waits_and_picks_up_a_seed_written_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "node_image.agent.seedsource")
    host = SimulatedHost(tmp_path / "host")
    put(host, LIVE_SEED, slot(b"{}"))
    found: list[seedsource.Found | None] = []
    waiting = threading.Thread(
        target=lambda: found.append(
            seedsource.wait_for_seed(
                host, seedsource.AUTO, partitions=False, backoff=Backoff(0.05, 0.1)
            )
        )
    )
    waiting.start()
    try:
        time.sleep(1.0)  # several looks, all blank
        assert not found
        put(host, LIVE_SEED, slot(seed_bytes(labels={"site": "later"})))
        waiting.join(10)
    finally:
        if waiting.is_alive():  # never leave the thread behind: give it a seed to end on
            put(host, LIVE_SEED, slot(seed_bytes()))
            waiting.join(10)
    assert found and found[0] is not None
    assert found[0].seed.labels == {"site": "later"}
    waits = [r for r in caplog.records if r.getMessage().startswith("no seed")]
    assert len(waits) == 1, [r.getMessage() for r in waits]  # said once, not per look


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def labelled_ext4(directory: Path, label: str, files: dict[str, bytes]) -> Iterator[str]:
    """A real ext4 filesystem labelled ``label`` holding ``files``, on a loop device."""
    content = directory / "content"
    content.mkdir()
    for name, data in files.items():
        (content / name).write_bytes(data)
    image = directory / "stick.img"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-d", str(content), str(image))
    loop = run("losetup", "--find", "--show", str(image))
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def test_seed_on_a_corral_labelled_ext4_partition_is_found_mounted_read_only_and_unmounted(
    tmp_path: Path,
) -> None:
    raw = seed_bytes(labels={"site": "usb-stick"})
    (tmp_path / "cmdline").write_text("BOOT_IMAGE=/vmlinuz ro quiet\n")
    host = LinuxHost(kernel=Kernel(cmdline=tmp_path / "cmdline"))
    before = mounts()
    with labelled_ext4(tmp_path, "CORRAL", {"seed.json": raw}) as loop:
        found = seedsource.find(host, seedsource.AUTO, partitions=True)
        assert found is not None, f"no seed found on {loop}"
        assert found.where == f"{loop} (label CORRAL):/seed.json"
        assert found.seed.labels == {"site": "usb-stick"}
        assert mounts() == before  # unmounted again
    assert "corral-seed-" not in mounts()


def test_a_cidata_partition_without_seed_json_is_no_seed(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("ro\n")
    host = LinuxHost(kernel=Kernel(cmdline=tmp_path / "cmdline"))
    with labelled_ext4(tmp_path, "CIDATA", {"user-data": b"#cloud-config\n"}) as loop:
        assert seedsource.labelled_devices(host, "CIDATA").count(loop) == 1
        found = seedsource.find(host, seedsource.AUTO, partitions=True)
        assert found is None or not found.where.startswith(loop)
    assert "corral-seed-" not in mounts()
