"""The seed file on the device: parsed by :mod:`registration.seed`, the same parser the
seeder uses, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from node_image.errors import AgentError
from registration import seed as seed_doc
from registration.seed import Seed

__all__ = ["Seed", "load", "parse"]


def parse(raw: bytes, where: str) -> Seed:
    try:
        return seed_doc.parse(raw)
    except seed_doc.SeedError as e:
        raise AgentError(f"seed {where}: {e}") from e


def load(path: Path) -> Seed:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AgentError(f"cannot read seed {path}: {e.strerror}") from e
    return parse(raw, str(path))
