"""The documents that cross the wire, versioned and typed (pydantic, strict).

Both sides import these: the agent builds requests from them and the server validates
with them, so a shape changes in one place. ``PROTOCOL_VERSION`` rises on breaking change.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, field_validator

from registration.document import Document as Document
from registration.errors import RegistrationError

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({1})

LABEL_KEY_RE = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9.-]{0,252}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")

Str256 = Annotated[str, Field(max_length=256)]


class ProtocolError(RegistrationError):
    code = "invalid_document"


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > 64:
        raise ValueError("at most 64 labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise ValueError(f"label key {key!r} is not a valid label key")
        if not LABEL_VALUE_RE.match(value):
            raise ValueError(
                f"label value {value!r} for {key!r} must be ≤63 chars of [A-Za-z0-9._-], "
                "starting and ending alphanumeric"
            )
    return labels


class Labelled(Document):
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class Cpu(Document):
    model: Str256 | None = None
    count: int = Field(ge=0, le=65536)


class Memory(Document):
    total_bytes: int = Field(ge=0)


class Disk(Document):
    name: Str256
    size_bytes: int = Field(ge=0)
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
    protocol_version: int


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


class TokenCreate(Document):
    """A registration token. Label values are templates, rendered at registration."""

    group: str = Field(default="default", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")
    labels: dict[str, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(default=86400, ge=1)
    max_uses: int | None = Field(default=1, ge=1)
    name_template: str = Field(default="edge-${dmi.product_uuid:8}", max_length=256)
    description: str = Field(default="", max_length=1024)

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        check_labels(dict.fromkeys(v, ""))
        return v


_T = TypeVar("_T", bound="Document")


class LabelPatch(Document):
    """Set labels (value) or remove them (None)."""

    labels: dict[str, str | None]

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
