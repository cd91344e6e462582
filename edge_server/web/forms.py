"""Reading dashboard forms: labels as ``key=value`` text, whole numbers, choices. Each
failure raises ``FormError`` naming the field, shown next to it; nothing is saved."""

from __future__ import annotations

import json

from edge_server import selectors
from edge_server.errors import BadRequest
from registration.document import ValidationError
from registration.errors import RegistrationError


class FormError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def labels(field: str, text: str) -> dict[str, str]:
    """``site=eu, role=gateway`` or one per line."""
    out: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise FormError(field, f"{part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def whole(field: str, text: str, lo: int, hi: int, blank: int | None) -> int | None:
    text = text.strip()
    if not text:
        return blank
    try:
        value = int(text)
    except ValueError as e:
        raise FormError(field, f"{text!r} is not a whole number") from e
    if not lo <= value <= hi:
        raise FormError(field, f"must be between {lo} and {hi}")
    return value


def selector(field: str, text: str) -> str:
    try:
        return str(selectors.parse(text))
    except (BadRequest, RegistrationError, ValueError) as e:
        raise FormError(field, str(getattr(e, "detail", e))) from e


def validation(field: str, e: ValidationError) -> FormError:
    """The first problem the document's check found, in words."""
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "labels")
    message = first.get("msg", "invalid")
    return FormError(field, f"{where}: {message}" if where else message)


def pretty(value: object) -> str:
    """JSON for people: indented, without the fields that say nothing (null)."""
    return json.dumps(_without_nulls(value), indent=2, sort_keys=True)


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: f"0{v:o}" if k == "mode" and isinstance(v, int) else _without_nulls(v)
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
