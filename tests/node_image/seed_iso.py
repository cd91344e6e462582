"""Small real hybrid ISOs made with ``grub-mkrescue`` (BIOS + UEFI, as the base ISO is), with
``/corral/seed.json`` as the seed slot, for the seeder's tests and bench."""

from __future__ import annotations

import subprocess
from pathlib import Path

from node_image.image.layout import ISO_VOLUME_ID, SEED_PAD, SEED_SLOT_SIZE

#: Only what a tiny ISO needs: no locales, fonts or themes (about 4 MB, half a second).
SMALL = ["--locales=", "--fonts=", "--themes=", "--install-modules=normal configfile"]


def make_iso(
    directory: Path,
    name: str = "base.iso",
    *,
    slot: bytes | None = b"{}",
    slot_size: int = SEED_SLOT_SIZE,
    filler_bytes: int = 0,
) -> Path:
    """An ISO at ``directory/name``. ``slot``: the placeholder's JSON (None: no seed file),
    padded with spaces to ``slot_size``; ``filler_bytes``: a file of random data beside it."""
    root = directory / f"{name}.root"
    (root / "corral").mkdir(parents=True)
    (root / "boot" / "grub").mkdir(parents=True)
    (root / "boot" / "grub" / "grub.cfg").write_text('menuentry "corral" { true }\n')
    if slot is not None:
        (root / "corral" / "seed.json").write_bytes(slot + SEED_PAD * (slot_size - len(slot)))
    (root / "corral" / "os-manifest.json").write_text('{"version": "test"}\n')
    if filler_bytes:
        with (root / "live.bin").open("wb") as f, open("/dev/urandom", "rb") as rnd:
            left = filler_bytes
            while left:
                chunk = rnd.read(min(left, 8 << 20))
                f.write(chunk)
                left -= len(chunk)
    out = directory / name
    subprocess.run(
        ["grub-mkrescue", *SMALL, "-o", str(out), str(root), "--", "-volid", ISO_VOLUME_ID],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def boot_report(iso: Path) -> str:
    """What xorriso says about the El Torito boot catalog and the system area (MBR, GPT)."""
    result = subprocess.run(
        [
            "xorriso",
            "-indev",
            str(iso),
            "-report_el_torito",
            "plain",
            "-report_system_area",
            "plain",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


def differing_offsets(a: Path, b: Path) -> list[int]:
    """The byte offsets where two files of the same size differ."""
    x, y = a.read_bytes(), b.read_bytes()
    assert len(x) == len(y)
    return [i for i in range(len(x)) if x[i] != y[i]]
