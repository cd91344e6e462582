"""Durations like ``90s``, ``15m``, ``24h``, ``7d``, or ``never``."""

from __future__ import annotations

import re

from edge_server.cli.errors import CliError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RE = re.compile(r"^(\d+)([smhdw])$")


def parse(text: str) -> int | None:
    if text in ("never", "0"):
        return None
    m = _RE.match(text.strip())
    if not m:
        raise CliError(f"bad duration {text!r}", hint="use e.g. 30m, 24h, 7d or never")
    return int(m.group(1)) * _UNITS[m.group(2)]
