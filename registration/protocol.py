"""The documents that cross the wire, versioned and typed (pydantic, strict).

Both sides import these: the agent builds requests from them and the server validates
with them, so a shape changes in one place. ``PROTOCOL_VERSION`` rises on breaking change.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, TypeVar

from registration.document import INT64_MAX as INT64_MAX
from registration.document import Count as Count
from registration.document import Document as Document
from registration.document import Field, ValidationError, field_validator
from registration.document import Int64 as Int64
from registration.errors import RegistrationError

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({1})

# Patterns are written for both Python (always with ``fullmatch``: ``$`` alone would accept a
# trailing newline) and JSON Schema (ECMA), so the OpenAPI document states the same rule.
LABEL_KEY_PATTERN = (
    r"^([A-Za-z0-9][A-Za-z0-9.-]{0,252}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
MAX_LABELS = 64
# Group names, and so a token's group: no leading dot or dash, so never "." or "..".
GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

# Every integer on the wire fits SQLite's signed 64-bit INTEGER.

Str256 = Annotated[str, Field(max_length=256)]

# What the label checks enforce, for the JSON Schema of a label map.
LABELS_SCHEMA: dict[str, Any] = {
    "maxProperties": MAX_LABELS,
    "propertyNames": {"pattern": LABEL_KEY_PATTERN},
    "additionalProperties": {"type": "string", "pattern": LABEL_VALUE_PATTERN},
}


class ProtocolError(RegistrationError):
    code = "invalid_document"


class InvalidJson(RegistrationError):
    code = "invalid_json"


# No document of ours nests deeper than a handful of levels; this bound keeps hostile input
# far from the interpreter's recursion limit in the decoder, pydantic and json.dumps.
MAX_JSON_DEPTH = 32


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"number {text[:40]} is out of range")
    return value


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays/objects deep (iterative, no recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def loads(data: bytes | bytearray | str) -> Any:
    """Decode untrusted JSON: strict numbers (no NaN, no Infinity, nothing that overflows to
    infinity) and at most :data:`MAX_JSON_DEPTH` levels of nesting. Raises :class:`InvalidJson`."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as e:
        raise InvalidJson(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidJson(f"body is not valid JSON: {e}") from e
    if not _depth_ok(value, MAX_JSON_DEPTH):
        raise InvalidJson(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"label key {key!r} is not a valid label key")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise ValueError(
                f"label value {value!r} for {key!r} must be ≤63 chars of [A-Za-z0-9._-], "
                "starting and ending alphanumeric"
            )
    return labels


class Labelled(Document):
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra=LABELS_SCHEMA)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class Cpu(Document):
    model: Str256 | None = None
    count: int = Field(ge=0, le=65536)


class Memory(Document):
    total_bytes: Count


class Disk(Document):
    name: Str256
    size_bytes: Count
    model: Str256 | None = None
    serial: Str256 | None = None
    removable: bool = False
    bus: Str256 | None = None


class Nic(Document):
    name: Str256
    mac: Str256 | None = None


class Facts(Document):
    """Hardware facts a device reports. DMI fields may be missing on boards without DMI."""

    hostname: Str256 = ""
    dmi: dict[str, Str256] = Field(default_factory=dict, max_length=64)
    cpu: Cpu = Field(default_factory=lambda: Cpu(count=0))
    memory: Memory = Field(default_factory=lambda: Memory(total_bytes=0))
    disks: list[Disk] = Field(default_factory=list, max_length=256)
    nics: list[Nic] = Field(default_factory=list, max_length=256)
    kernel: Str256 = ""
    arch: Str256 = ""


class RegisterRequest(Labelled):
    token: str = Field(max_length=256)
    csr: str = Field(max_length=8192)
    facts: Facts
    agent_version: Str256
    protocol_version: Int64


class Endpoints(Document):
    api: str
    mqtt: str | None = None


class RegisterResponse(Document):
    device_id: str
    name: str
    certificate: str
    ca: str
    serial: str
    labels: dict[str, str]
    group: str
    endpoints: Endpoints
    created: bool
    #: The server's update-signing key (ed25519, raw 32 bytes, base64): the device pins it
    #: and verifies every artifact against it (``registration.artifacts``).
    update_signing_key: str | None = Field(default=None, max_length=64)


class CertificateRenewRequest(Document):
    """A device asks for a new certificate (mTLS with its current one), same key or new."""

    csr: str = Field(max_length=8192)


class CertificateRenewResponse(Document):
    certificate: str
    ca: str
    serial: str
    #: Unix seconds: the new certificate's validity.
    not_before: float
    not_after: float


class TokenCreate(Document):
    """A registration token. Label values are templates, rendered at registration."""

    group: str = Field(default="default", pattern=GROUP_NAME_PATTERN)
    labels: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": MAX_LABELS,
            "propertyNames": LABELS_SCHEMA["propertyNames"],
        },
    )
    ttl_seconds: int | None = Field(default=86400, ge=1, le=INT64_MAX)
    max_uses: int | None = Field(default=1, ge=1, le=INT64_MAX)
    name_template: str = Field(default="edge-${dmi.product_uuid:8}", max_length=256)
    description: str = Field(default="", max_length=1024)

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        check_labels(dict.fromkeys(v, ""))
        return v


#: The label that makes a device its group's K3s server node.
K3S_ROLE_LABEL = "corral.dev/k3s-role"


class K3sServerReport(Document):
    """``POST /api/v1/devices/<id>/k3s`` (mTLS): the K3s server node tells the Corral server
    how its group's other nodes join it. The token travels only over mTLS HTTPS, in this
    report and in the agents' specs, never over MQTT."""

    #: The K3s supervisor/API URL the agents join (``K3S_URL``): https only, as the
    #: installer requires.
    server_url: str = Field(max_length=1024, pattern=r"^https://[^\s/]+(:[0-9]{1,5})?/?$")
    #: The node token (``/var/lib/rancher/k3s/server/node-token``).
    token: str = Field(min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")
    #: The K3s version installed and running on the server node.
    version: str = Field(min_length=1, max_length=128)


class K3sServerAck(Document):
    """The answer: the cluster (group) and how many of its devices now join this server."""

    group: str
    agents: Count


_T = TypeVar("_T", bound="Document")


class LabelPatch(Document):
    """Set labels (value) or remove them (None)."""

    labels: dict[str, str | None] = Field(
        json_schema_extra={
            "propertyNames": LABELS_SCHEMA["propertyNames"],
            "additionalProperties": {
                "anyOf": [LABELS_SCHEMA["additionalProperties"], {"type": "null"}]
            },
        }
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        check_labels({k: val for k, val in v.items() if val is not None})
        for key in v:
            check_labels({key: ""})
        return v


def parse(model: type[_T], data: Any) -> _T:
    """Validate a decoded JSON value, raising :class:`ProtocolError` with a readable reason."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ProtocolError(f"{where}: {first['msg']} ({e.error_count()} error(s))") from e
