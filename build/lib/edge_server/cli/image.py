"""``corral image …``: the node image. Each verb lives in a module of its own
(``image_build``, ``image_seed``, ``image_flash``) with ``add_parsers(verbs, common)``;
this noun only gathers them."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: The modules that add verbs under ``corral image`` (imported only when present).
VERB_MODULES = ("image_build", "image_seed", "image_flash")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("image", help="build, seed and flash the node image")
    verbs = p.add_subparsers(dest="verb", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"edge_server.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"edge_server.cli.{name}":
                raise
            continue
        module.add_parsers(verbs, common)
