"""The seed slot on real ISOs made by grub-mkrescue: seeding changes only the slot's bytes,
leaves the boot records as built, reads back with the agent's parser, and refuses what does
not fit with nothing written."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pycdlib
import pytest

from node_image.image import seedslot
from node_image.image.layout import SEED_PATH, SEED_SLOT_SIZE
from registration import seed as seed_doc
from registration import tokens
from tests.node_image.seed_iso import boot_report, differing_offsets, make_iso
from tests.server_process import CORRAL, tree_env


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("iso"))


def a_seed(**extra: object) -> seed_doc.Seed:
    token = tokens.generate("ab" * 32)
    return seed_doc.from_dict(
        {"server": "https://corral.example:8443", "token": str(token), **extra}
    )


def read_back(iso: Path) -> bytes:
    image = pycdlib.PyCdlib()
    image.open(str(iso))
    try:
        out = io.BytesIO()
        image.get_file_from_iso_fp(out, rr_path=SEED_PATH)
        return out.getvalue()
    finally:
        image.close()


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args], capture_output=True, text=True, timeout=60, env=tree_env()
    )


def test_seeding_changes_only_the_slot_and_reads_back(base_iso: Path, tmp_path: Path) -> None:
    offset, length = seedslot.find_slot(base_iso)
    assert length == SEED_SLOT_SIZE
    seed = a_seed(labels={"site": "berlin"}, install_disk="/dev/vda")
    out = tmp_path / "seeded.iso"
    seedslot.seed_image(base_iso, out, seedslot.render(seed))

    changed = differing_offsets(base_iso, out)
    assert changed, "the seed was not written"
    assert all(offset <= i < offset + length for i in changed)
    assert boot_report(out) == boot_report(base_iso)
    raw = read_back(out)
    assert len(raw) == SEED_SLOT_SIZE
    assert seed_doc.parse(raw) == seed
    assert seedslot.find_slot(out) == (offset, length)  # a seeded ISO can be seeded again
    assert [p.name for p in tmp_path.iterdir()] == ["seeded.iso"]  # no temp file left


def test_stream_matches_the_written_copy_for_any_range(base_iso: Path, tmp_path: Path) -> None:
    offset, _ = seedslot.find_slot(base_iso)
    slot = seedslot.render(a_seed())
    out = tmp_path / "seeded.iso"
    seedslot.seed_image(base_iso, out, slot)
    whole = out.read_bytes()
    assert b"".join(seedslot.stream(base_iso, offset, slot, chunk=3000)) == whole
    for start, end in [
        (0, 10),
        (offset - 5, offset + 7),
        (offset + 100, offset + 200000),
        (len(whole) - 3, len(whole)),
    ]:
        got = b"".join(seedslot.stream(base_iso, offset, slot, start, end, chunk=4096))
        assert got == whole[start:end], (start, end)


def test_a_too_big_seed_is_refused() -> None:
    labels = {f"k{i}": "v" * 60 for i in range(1200)}
    seed = seed_doc.Seed(
        server="https://corral.example", token=tokens.generate("ab" * 32), labels=labels
    )
    with pytest.raises(seedslot.SeedSlotError, match="more than the seed slot"):
        seedslot.render(seed)


def test_an_iso_without_a_slot_is_refused_and_nothing_written(tmp_path: Path) -> None:
    plain = make_iso(tmp_path, "plain.iso", slot=None)
    with pytest.raises(seedslot.SeedSlotError, match="has no seed slot"):
        seedslot.find_slot(plain)
    out = tmp_path / "out" / "seeded.iso"
    with pytest.raises(seedslot.SeedSlotError):
        seedslot.seed_image(plain, out, seedslot.render(a_seed()))
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_slot_of_the_wrong_size_or_content_is_refused(tmp_path: Path) -> None:
    small = make_iso(tmp_path, "small.iso", slot_size=4096)
    with pytest.raises(seedslot.SeedSlotError, match="not the seed slot's 65536"):
        seedslot.find_slot(small)
    garbage = make_iso(tmp_path, "garbage.iso", slot=b"not json")
    with pytest.raises(seedslot.SeedSlotError, match="JSON"):
        seedslot.find_slot(garbage)
    not_iso = tmp_path / "not.iso"
    not_iso.write_bytes(b"\0" * 100000)
    with pytest.raises(seedslot.SeedSlotError, match="not a readable ISO"):
        seedslot.find_slot(not_iso)


def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(
    base_iso: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seeded.iso"
    common = ["image", "seed", "--base", str(base_iso), "--out", str(out)]
    good = str(tokens.generate("ab" * 32))
    cases = {
        "malformed token": [*common, "--server", "https://x.example", "--token", "crl1.nope"],
        "bad seed": [
            *common,
            "--server",
            "https://x.example",
            "--token",
            good,
            "--install-disk",
            "/etc/passwd",
            "--no-verify-server",
        ],
        "not an https server": [*common, "--server", "http://x.example", "--token", good],
    }
    errors = {}
    for what, argv in cases.items():
        result = corral(*argv)
        assert result.returncode != 0, what
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("corral: error:"), (what, result.stderr)
        assert not out.exists(), what
        errors[what] = lines[0]
    assert "malformed token" in errors["malformed token"]
    assert "install_disk" in errors["bad seed"]
    assert "https://" in errors["not an https server"]


def test_cli_seeds_offline_with_no_verify_server(base_iso: Path, tmp_path: Path) -> None:
    out = tmp_path / "seeded.iso"
    token = str(tokens.generate("ab" * 32))
    result = corral(
        "image",
        "seed",
        "--base",
        str(base_iso),
        "--out",
        str(out),
        "--server",
        "https://corral.example:8443",
        "--token",
        token,
        "--label",
        "site=berlin",
        "--hostname-template",
        "edge-${dmi.product_uuid:8}",
        "--ip",
        "10.0.0.5/24",
        "--gateway",
        "10.0.0.1",
        "--dns",
        "10.0.0.1",
        "--dns",
        "9.9.9.9",
        "--interface",
        "en*",
        "--no-verify-server",
    )
    assert result.returncode == 0, result.stderr
    seed = seed_doc.parse(read_back(out))
    assert str(seed.token) == token
    assert seed.labels == {"site": "berlin"}
    assert seed.network is not None and str(seed.network.address) == "10.0.0.5/24"
    assert [str(d) for d in seed.network.dns] == ["10.0.0.1", "9.9.9.9"]
    assert json.loads(read_back(out))["hostname_template"] == "edge-${dmi.product_uuid:8}"
