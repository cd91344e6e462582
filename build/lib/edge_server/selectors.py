"""Label selectors, Kubernetes-style: ``site=eu,role!=test,gpu,!lab``.

``key=value`` (or ``==``), ``key!=value``, ``key`` (exists) and ``!key`` (does not exist),
joined by commas, all of which must hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edge_server.errors import BadRequest
from registration.protocol import LABEL_KEY_RE, LABEL_VALUE_RE

Op = Literal["=", "!=", "exists", "!exists"]
_TERM = re.compile(r"\s*(!?)\s*([^=!\s]+)\s*(?:(==|=|!=)\s*(\S*))?\s*")
# Each term is one clause of the device query, and SQLite refuses expression trees past 1,000
# deep. A group's selector (at most 1,024 characters) never has more than 512 terms, so groups
# stored before this cap still parse.
MAX_TERMS = 512


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    value: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op in ("=", "!="):
                parts.append(f"{r.key}{r.op}{r.value}")
            else:
                parts.append(("!" if r.op == "!exists" else "") + r.key)
        return ",".join(parts)


def parse(text: str | None) -> Selector:
    if not text or not text.strip():
        return Selector(())
    terms = text.split(",")
    if len(terms) > MAX_TERMS:
        raise BadRequest(
            f"selector has {len(terms)} terms; at most {MAX_TERMS} are allowed",
            code="bad_selector",
        )
    requirements: list[Requirement] = []
    for term in terms:
        m = _TERM.fullmatch(term)
        if not m:
            raise BadRequest(f"bad selector term {term!r}", code="bad_selector")
        negate, key, op, value = m.groups()
        if not LABEL_KEY_RE.fullmatch(key):
            raise BadRequest(f"bad label key {key!r} in selector", code="bad_selector")
        if op is None:
            requirements.append(Requirement(key, "!exists" if negate else "exists"))
            continue
        if negate:
            raise BadRequest(f"'!' only negates a bare key, in {term!r}", code="bad_selector")
        if not LABEL_VALUE_RE.fullmatch(value or ""):
            raise BadRequest(f"bad label value {value!r} in selector", code="bad_selector")
        requirements.append(Requirement(key, "!=" if op == "!=" else "=", value or ""))
    return Selector(tuple(requirements))
