"""Desired state and status: the spec a device converges to, and what it reports back.

Shared by the server (which computes specs and applies status) and the agent (which pulls
specs, reconciles, and reports). Topics of the MQTT channel live here too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from registration.artifacts import ArtifactRef
from registration.document import Count, Document, Field, field_validator, model_validator

MAX_CONFIG_BYTES = 256 * 1024

# An absolute, normalised path: segments of anything but "/" and control characters, none of
# them "." or "..", no "//" (POSIX keeps a leading "//", which normpath leaves alone) and no
# trailing "/". Valid in Python (with fullmatch) and in JSON Schema.
CONFIG_PATH_PATTERN = r"^(/(?!\.\.?(/|$))[^/\x00-\x1f\x7f]+)+$"
_CONFIG_PATH_RE = re.compile(CONFIG_PATH_PATTERN)

# MQTT topics. A device may subscribe only to its nudge topic and publish only its status
# and presence topics; the server subscribes to every device's status and presence.
TOPIC_ROOT = "corral/v1/devices"


def nudge_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/nudge"


def status_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/status"


def presence_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/presence"


def device_of_topic(topic: str) -> tuple[str, str] | None:
    """``corral/v1/devices/<id>/<kind>`` → ``(id, kind)``, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != TOPIC_ROOT or not parts[3]:
        return None
    return parts[3], parts[4]


class ConfigFile(Document):
    path: str = Field(max_length=4096, json_schema_extra={"pattern": CONFIG_PATH_PATTERN})
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    content: str = Field(default="", max_length=MAX_CONFIG_BYTES)

    @field_validator("path")
    @classmethod
    def _absolute_normal(cls, v: str) -> str:
        if not _CONFIG_PATH_RE.fullmatch(v):
            raise ValueError(
                f"config path {v!r} must be absolute and normalised "
                "(no . or .., no //, no trailing /, no control characters)"
            )
        return v


class OsSpec(Document):
    version: str | None = Field(default=None, max_length=128)
    #: Resolved by the server from the mirror (kind ``os-image``, this version).
    image: ArtifactRef | None = None
    #: Install a version lower than the running one (refused otherwise).
    allow_downgrade: bool | None = None


class K3sSpec(Document):
    version: str | None = Field(default=None, max_length=128)
    role: Literal["server", "agent", "auto"] | None = None
    #: Filled by the server for agents of a cluster: the server node's URL and join token
    #: (this spec travels only over mTLS HTTPS, never MQTT).
    server_url: str | None = Field(default=None, max_length=1024)
    token: str | None = Field(default=None, max_length=1024)
    #: Resolved by the server from the mirror for this version (binary for the device's arch).
    install_script: ArtifactRef | None = None
    binary: ArtifactRef | None = None
    images: ArtifactRef | None = None


class Bundle(Document):
    name: str = Field(max_length=253, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    content: str = Field(default="", max_length=MAX_CONFIG_BYTES)


#: Fields the server fills when it computes a spec (artifacts from the mirror, the cluster's
#: join URL and token): a group or an override setting one is refused.
SERVER_RESOLVED: dict[str, tuple[str, ...]] = {
    "os": ("image",),
    # role: the cluster's (edge_server.k3s_cluster; the label corral.dev/k3s-role=server)
    "k3s": ("role", "server_url", "token", "install_script", "binary", "images"),
}


class SpecPatch(Document):
    """What a group or a per-device override sets. ``None`` means: this layer says nothing.
    The fields in :data:`SERVER_RESOLVED` are the server's: a patch may not set them."""

    os: OsSpec | None = None
    k3s: K3sSpec | None = None
    bundles: list[Bundle] | None = None
    config: list[ConfigFile] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_server_resolved_fields(cls, data: Any) -> Any:
        """Checked before the fields are, so the answer names the rule, not a shape error."""
        if not isinstance(data, dict):
            return data
        for section, names in SERVER_RESOLVED.items():
            part = data.get(section)
            for name in names:
                value = part.get(name) if isinstance(part, dict) else getattr(part, name, None)
                if value is not None:
                    raise ValueError(
                        f"{section}.{name} is filled by the server (from the artifact mirror "
                        f"or the cluster); set {section}.version instead"
                    )
        return data


class Spec(Document):
    """A device's computed desired state."""

    os: OsSpec = Field(default_factory=OsSpec)
    k3s: K3sSpec = Field(default_factory=K3sSpec)
    bundles: list[Bundle] = Field(default_factory=list)
    config: list[ConfigFile] = Field(default_factory=list)


class SpecDocument(Document):
    """``GET /api/v1/devices/<id>/spec``."""

    device_id: str
    generation: Count
    spec: Spec
    acked_seq: Count = 0


ConditionStatus = Literal[
    "Applied",
    # Drift found (a managed file changed by hand), then repaired.
    "Modified",
    "Pending",
    "Progressing",
    "Error",
    "Ready",
    "Unknown",
    # The os reconciler: the new version runs and passed its health check; it failed and
    # the old slot runs again; the image was refused (unsigned, tampered, older).
    "Healthy",
    "RolledBack",
    "Refused",
    # The k3s reconciler: installed, the node not (yet) Ready.
    "Installed",
]


class Condition(Document):
    type: str = Field(max_length=64)
    status: ConditionStatus
    reason: str = Field(default="", max_length=128)
    message: str = Field(default="", max_length=2048)
    #: The version installed of what this reconciler manages (``os``: the OS, ``k3s``: K3s),
    #: when it manages something versioned and knows it.
    version: str | None = Field(default=None, max_length=128)


class StatusEvent(Document):
    """One durable status event from the agent's outbox."""

    seq: Annotated[Count, Field(ge=1)]
    observed_generation: Count
    conditions: list[Condition] = Field(default_factory=list, max_length=64)
    at: float  # finite: Document refuses NaN and infinity


class StatusBatch(Document):
    """Status events, in seq order, over MQTT or ``POST /api/v1/devices/<id>/status``."""

    events: list[StatusEvent] = Field(max_length=1000)


class StatusAck(Document):
    acked_seq: Count
    applied: Count


class Nudge(Document):
    """The retained message on a device's nudge topic. Never carries secrets."""

    generation: Count
    acked_seq: Count = 0


class Presence(Document):
    online: bool
