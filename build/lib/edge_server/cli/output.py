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


#: A readable view: sections of (key, value) lines; a section without a title is the header.
Section = tuple[str | None, Sequence[tuple[str, Any]]]


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _aligned(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def describe(sections: Sequence[Section]) -> str:
    """``kubectl describe``-like text: ``Key:  value`` lines, titled sections indented."""
    out: list[str] = []
    for title, items in sections:
        indent = ""
        if title is not None:
            out.append(f"{title}:\n")
            indent = "  "
            if not items:
                out.append(f"{indent}(none)\n")
                continue
        rows = [[f"{key}:" if key else "", _text(value)] for key, value in items]
        if rows:
            out.append(_aligned(rows, indent))
    return "".join(out)


def emit(data: Any, fmt: str, columns: Sequence[Column] | None = None) -> None:
    if fmt == "json" or columns is None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = [[name.upper() for name, _ in columns]]
    table += [["-" if (v := get(row)) is None else str(v) for _, get in columns] for row in rows]
    sys.stdout.write(_aligned(table))


def emit_view(data: Any, fmt: str, view: Callable[[Any], Sequence[Section]]) -> None:
    """One object: JSON with ``-o json``, else its readable view."""
    if fmt == "json":
        emit(data, "json")
        return
    sys.stdout.write(describe(view(data)))
