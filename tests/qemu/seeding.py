"""A seeded copy of a base ISO for the boot tests.

Uses the product's seeder (``node_image.image.seedslot.seed_image``) when this tree has it;
until then the seed slot is patched here the way the design says: find the extent of
``/corral/seed.json`` with pycdlib and overwrite those bytes in a copy, keeping the length.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

from node_image.image import layout


def seed_document(server_url: str, token: str, **extra: Any) -> bytes:
    return json.dumps({"server": server_url, "token": token, **extra}).encode()


def seed_iso(base: Path, out: Path, seed: bytes) -> None:
    try:
        seedslot = importlib.import_module("node_image.image.seedslot")
    except ModuleNotFoundError as e:
        if e.name != "node_image.image.seedslot":
            raise
        _patch_slot(base, out, seed)
        return
    seedslot.seed_image(base, out, seed)


def slot_extent(iso: Path) -> tuple[int, int]:
    """(byte offset, length) of the seed slot in ``iso``."""
    import pycdlib

    pc = pycdlib.PyCdlib()
    pc.open(str(iso))
    try:
        record = pc.get_record(rr_path=layout.SEED_PATH)
        offset = record.extent_location() * pc.logical_block_size
        length = record.get_data_length()
    finally:
        pc.close()
    return offset, length


def _patch_slot(base: Path, out: Path, seed: bytes) -> None:
    offset, length = slot_extent(base)
    if length != layout.SEED_SLOT_SIZE or len(seed) > length:
        raise ValueError(f"seed slot of {length} bytes cannot take {len(seed)} bytes")
    shutil.copyfile(base, out)
    with open(out, "r+b") as f:
        f.seek(offset)
        if f.read(2) != b"{}":
            raise ValueError(f"{base}: the seed slot at {offset} is not an empty one")
        f.seek(offset)
        f.write(seed + layout.SEED_PAD * (length - len(seed)))
