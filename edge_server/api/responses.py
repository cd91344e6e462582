"""The JSON documents the HTTP API answers with, as pydantic models.

``api/openapi.py`` generates the 2xx schemas from them, and a test validates live responses
of a real server against that document (``tests/edge_server/test_openapi.py``), so a change
to what a handler returns that is not made here too fails that test.
Wire documents shared with the agent (``RegisterResponse``, ``SpecDocument``, ``StatusAck``)
live in ``registration``; these are the operator-facing ones.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_server.channel import ChannelStats
from registration.artifacts import ArtifactKind
from registration.desired import Condition, Spec, SpecPatch
from registration.protocol import LABELS_SCHEMA, Facts

Labels = Annotated[dict[str, str], Field(json_schema_extra=LABELS_SCHEMA)]


class Answer(BaseModel):
    """An answer document: every field it has is listed (``additionalProperties: false``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Health(Answer):
    """``ok``; or ``degraded`` (503) while the disk under the database is full."""

    status: Literal["ok", "degraded"]
    storage: Literal["full"] | None = None
    detail: str | None = None


class TokenRow(Answer):
    """A registration token, never its secret."""

    id: str
    group_name: str
    labels: dict[str, str] = Field(description="label templates, rendered at registration")
    name_template: str
    description: str
    max_uses: int | None
    uses: int
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    created_by: str


class TokenCreated(TokenRow):
    token: str = Field(description="the full token; shown this once")


class TokenList(Answer):
    items: list[TokenRow]


class DeviceSummary(Answer):
    """A device in the list."""

    id: str
    name: str
    group: str
    labels: Labels
    facts: Facts
    agent_version: str
    registered_at: float
    updated_at: float
    online: bool
    last_seen: float | None
    generation: int
    observed_generation: int
    conditions: list[Condition]
    groups: list[str]


class DevicePage(Answer):
    items: list[DeviceSummary]
    total: int = Field(description="devices matching the selector, on every page")
    next: str | None = Field(description="pass as ?after= for the next page; null on the last")


class DeviceRow(Answer):
    """A device's inventory record."""

    id: str
    name: str
    group: str
    dmi_uuid: str | None
    public_key_sha256: str | None
    labels: Labels
    facts: Facts
    agent_version: str
    protocol_version: int
    token_id: str | None
    registered_at: float
    updated_at: float
    reset_at: float | None


class Certificate(Answer):
    serial: str = Field(description="decimal; too large for a JSON number")
    issued_at: float
    not_after: float
    revoked_at: float | None


class Desired(Answer):
    generation: int
    spec: Spec | None


class EventCounts(Answer):
    events: int
    distinct: int
    max_seq: int


class Reported(Answer):
    observed_generation: int
    conditions: list[Condition]
    acked_seq: int
    status_at: float | None
    status_events: EventCounts


class LabelSources(Answer):
    local: Labels
    token: Labels
    operator: Labels


class DeviceDetail(DeviceRow):
    """One device: inventory, certificates, desired against reported state, presence."""

    certificates: list[Certificate]
    desired: Desired
    reported: Reported
    groups: list[str]
    override: SpecPatch
    online: bool
    last_seen: float | None
    in_sync: bool
    label_sources: LabelSources


class DeviceAction(Answer):
    id: str
    status: Literal["delete", "reset"]


class Whoami(Answer):
    device_id: str
    serial: str
    name: str
    labels: Labels


class OverrideSet(Answer):
    device_id: str
    generation: int
    override: SpecPatch


class ArtifactsServed(Answer):
    """What the artifact content endpoint wrote to clients since the server started."""

    requests: int
    range_requests: int
    completed: int
    bytes_served: int = Field(description="bytes actually written, cut downloads included")


class Stats(Answer):
    channel: ChannelStats
    artifacts: ArtifactsServed


class ArtifactRow(Answer):
    """An artifact in the mirror: its identity, size, sha256 and the server's signature."""

    id: str
    kind: ArtifactKind
    name: str
    version: str
    arch: str | None
    sha256: str
    size: int
    signature: str = Field(description="base64 ed25519 over registration.artifacts.signing_message")
    created_at: float
    created_by: str


class ArtifactImported(ArtifactRow):
    devices_changed: int = Field(description="devices whose spec now names a changed artifact")


class ArtifactList(Answer):
    items: list[ArtifactRow]


class ArtifactDeleted(Answer):
    id: str
    status: Literal["deleted"]
    devices_changed: int


class GroupRow(Answer):
    name: str
    selector: str
    priority: int
    spec: SpecPatch
    created_at: float
    updated_at: float


class GroupChanged(GroupRow):
    devices_changed: int = Field(description="devices whose generation rose")


class GroupDeleted(Answer):
    name: str
    status: Literal["deleted"]
    devices_changed: int


class GroupList(Answer):
    items: list[GroupRow]


class ApiTokenCreated(Answer):
    id: str
    token: str = Field(description="the full API token; shown this once")
    username: str


class ApiTokenRow(Answer):
    id: str
    username: str
    description: str
    created_at: float
    revoked_at: float | None


class ApiTokenList(Answer):
    items: list[ApiTokenRow]


class ApiTokenRevoked(Answer):
    id: str
    status: Literal["revoked"]
