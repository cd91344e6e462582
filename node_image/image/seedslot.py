"""The seed slot: ``/corral/seed.json`` in the base ISO, overwritten in place.

The base ISO carries the seed file as one extent of exactly :data:`SEED_SLOT_SIZE` bytes
(``{}`` padded with spaces). Seeding writes a seed of the same length over those bytes in a
copy; nothing else in the image changes, so its BIOS, UEFI and hybrid-USB boot stay as built
(remastering with xorriso or pycdlib broke BIOS disk boot; see DESIGN.md, Images).

- :func:`find_slot` finds the slot's byte offset and length with pycdlib;
- :func:`render` turns a :class:`~registration.seed.Seed` into the slot's bytes;
- :func:`seed_image` writes a seeded copy (fast copy, pwrite, fsync, atomic rename);
- :func:`stream` yields a seeded image's bytes (or a range of them) without writing a copy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from node_image.errors import AgentError
from node_image.image.layout import SEED_PAD, SEED_PATH, SEED_SLOT_SIZE
from registration.seed import Seed

#: Bytes per read when streaming a seeded image.
CHUNK = 1024 * 1024


class SeedSlotError(AgentError, ValueError):
    """An ISO without a usable seed slot, or a seed that does not fit in it."""


def find_slot(iso: Path) -> tuple[int, int]:
    """The byte offset and length of the seed slot's single extent in ``iso``.

    Raises :class:`SeedSlotError` when ``iso`` is no ISO, has no ``/corral/seed.json``, or the
    file is not one extent of exactly :data:`SEED_SLOT_SIZE` bytes holding JSON and padding.
    """
    image = pycdlib.PyCdlib()
    try:
        image.open(str(iso))
    except (PyCdlibException, OSError) as e:
        raise SeedSlotError(f"{iso} is not a readable ISO 9660 image: {e}") from e
    try:
        record = _seed_record(image, iso)
        length = record.get_data_length()
        offset = record.extent_location() * image.logical_block_size
    finally:
        image.close()
    if length != SEED_SLOT_SIZE:
        raise SeedSlotError(
            f"{iso}: {SEED_PATH} is {length} bytes, not the seed slot's {SEED_SLOT_SIZE}"
        )
    with iso.open("rb") as f:
        f.seek(offset)
        raw = f.read(length)
    check_slot_bytes(raw, f"{iso}: {SEED_PATH}")
    return offset, length


def _seed_record(image: pycdlib.PyCdlib, iso: Path) -> Any:
    """The directory record of the seed file, by its Rock Ridge, Joliet or ISO 9660 name."""
    attempts: list[dict[str, str]] = []
    if image.has_rock_ridge():
        attempts.append({"rr_path": SEED_PATH})
    if image.has_joliet():
        attempts.append({"joliet_path": SEED_PATH})
    attempts.append({"iso_path": SEED_PATH.upper() + ";1"})
    for kwargs in attempts:
        try:
            return image.get_record(**kwargs)
        except PyCdlibException:
            continue
    raise SeedSlotError(
        f"{iso} has no seed slot ({SEED_PATH}); build it with 'corral image build-base'"
    )


def check_slot_bytes(raw: bytes, where: str) -> None:
    """``raw`` is a slot: :data:`SEED_SLOT_SIZE` bytes of a JSON object padded with spaces."""
    if len(raw) != SEED_SLOT_SIZE:
        raise SeedSlotError(f"{where}: {len(raw)} bytes, not {SEED_SLOT_SIZE}")
    body = raw.rstrip(SEED_PAD)
    try:
        document = json.loads(body)
    except ValueError as e:
        raise SeedSlotError(f"{where} does not hold JSON padded with spaces: {e}") from e
    if not isinstance(document, dict):
        raise SeedSlotError(f"{where} does not hold a JSON object")


def render(seed: Seed) -> bytes:
    """The slot's bytes for ``seed``: its JSON padded with spaces to :data:`SEED_SLOT_SIZE`."""
    body = seed.to_json()
    if len(body) > SEED_SLOT_SIZE:
        raise SeedSlotError(
            f"the seed is {len(body)} bytes, more than the seed slot's {SEED_SLOT_SIZE}; "
            "use fewer or shorter labels"
        )
    return body + SEED_PAD * (SEED_SLOT_SIZE - len(body))


def seed_image(base: Path, out: Path, seed_bytes: bytes) -> None:
    """Write ``base`` with ``seed_bytes`` in its seed slot to ``out``, atomically.

    The copy goes to a temp file next to ``out`` (copy_file_range, reflinks where the
    filesystem has them), the slot is overwritten with pwrite, the file fsynced and renamed
    over ``out``. On any error ``out`` is untouched and the temp file removed.
    """
    check_slot_bytes(seed_bytes, "the seed")
    offset, length = find_slot(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        shutil.copyfile(base, tmp)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            if os.pwrite(fd, seed_bytes, offset) != length:
                raise SeedSlotError(f"short write of the seed slot into {tmp}")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stream(
    base: Path,
    slot_offset: int,
    seed_bytes: bytes,
    start: int = 0,
    end: int | None = None,
    chunk: int = CHUNK,
) -> Generator[bytes, None, None]:
    """The bytes ``[start, end)`` of ``base`` with ``seed_bytes`` at ``slot_offset``.

    ``end`` defaults to the file's size. Reads ``chunk`` bytes at a time; the caller checks
    the slot once (:func:`find_slot`) and passes its offset.
    """
    size = base.stat().st_size
    stop = size if end is None else min(end, size)
    if slot_offset + len(seed_bytes) > size:
        raise SeedSlotError(f"{base}: the seed slot ends past the end of the file")
    with base.open("rb") as f:
        f.seek(start)
        pos = start
        while pos < stop:
            data = f.read(min(chunk, stop - pos))
            if not data:
                raise SeedSlotError(f"{base} shrank while it was being read")
            yield splice(data, pos, slot_offset, seed_bytes)
            pos += len(data)


def splice(data: bytes, pos: int, slot_offset: int, seed_bytes: bytes) -> bytes:
    """``data`` (the file's bytes from ``pos``) with the part overlapping the slot replaced."""
    lo = max(pos, slot_offset)
    hi = min(pos + len(data), slot_offset + len(seed_bytes))
    if lo >= hi:
        return data
    return data[: lo - pos] + seed_bytes[lo - slot_offset : hi - slot_offset] + data[hi - pos :]
