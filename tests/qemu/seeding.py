"""A seeded copy of a base ISO for the boot tests, made by the product's seeder
(:mod:`node_image.image.seedslot`), the code behind ``corral image seed`` and the server's
``seed.iso``; the seed is checked by :mod:`registration.seed` on the way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node_image.image import seedslot
from registration import seed as seed_doc


def seed_document(server_url: str, token: str, **extra: Any) -> bytes:
    """The slot's bytes: the seed's JSON padded with spaces to the slot's size."""
    return seedslot.render(seed_doc.from_dict({"server": server_url, "token": token, **extra}))


def seed_iso(base: Path, out: Path, seed: bytes) -> None:
    seedslot.seed_image(base, out, seed)


def slot_extent(iso: Path) -> tuple[int, int]:
    """(byte offset, length) of the seed slot in ``iso``."""
    return seedslot.find_slot(iso)
