"""Tables for people, JSON with ``-o json`` for programs."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def labels(value: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((value or {}).items())) or "-"


def emit(data: Any, fmt: str, columns: Sequence[Column] | None = None) -> None:
    if fmt == "json" or columns is None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = [[name.upper() for name, _ in columns]]
    table += [["-" if (v := get(row)) is None else str(v) for _, get in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for row in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.write("\n")
