"""The JSON documents the HTTP API answers with, as pydantic models.

``api/openapi.py`` generates the 2xx schemas from them, and a test validates live responses
of a real server against that document (``tests/edge_server/test_openapi.py``), so a change
to what a handler returns that is not made in its model too fails that test.
Most answers are the rows an operation returns (``edge_server.ops``, re-exported here); the
few a handler builds itself are defined here. Wire documents shared with the agent
(``RegisterResponse``, ``SpecDocument``, ``StatusAck``) live in ``registration``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_server.channel import ChannelStats
from edge_server.ops.api_tokens import (
    ApiTokenCreated,
    ApiTokenList,
    ApiTokenRevoked,
    ApiTokenRow,
)
from edge_server.ops.artifacts import (
    ArtifactDeleted,
    ArtifactImported,
    ArtifactList,
    ArtifactRow,
)
from edge_server.ops.devices import (
    Certificate,
    DeviceAction,
    DeviceDetail,
    DevicePage,
    DeviceRow,
    DeviceSummary,
    OverrideSet,
    Whoami,
)
from edge_server.ops.groups import GroupChanged, GroupDeleted, GroupList, GroupRow
from edge_server.ops.tokens import TokenCreated, TokenList, TokenRow

__all__ = [
    "Answer",
    "ApiTokenCreated",
    "ApiTokenList",
    "ApiTokenRevoked",
    "ApiTokenRow",
    "ArtifactDeleted",
    "ArtifactImported",
    "ArtifactList",
    "ArtifactRow",
    "ArtifactsServed",
    "Certificate",
    "DeviceAction",
    "DeviceDetail",
    "DevicePage",
    "DeviceRow",
    "DeviceSummary",
    "GroupChanged",
    "GroupDeleted",
    "GroupList",
    "GroupRow",
    "Health",
    "OverrideSet",
    "Stats",
    "TokenCreated",
    "TokenList",
    "TokenRow",
    "Whoami",
]


class Answer(BaseModel):
    """An answer document: every field it has is listed (``additionalProperties: false``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Health(Answer):
    """``ok``; or ``degraded`` (503) while the disk under the database is full."""

    status: Literal["ok", "degraded"]
    storage: Literal["full"] | None = None
    detail: str | None = None


class ArtifactsServed(Answer):
    """What the artifact content endpoint wrote to clients since the server started."""

    requests: int
    range_requests: int
    completed: int
    bytes_served: int = Field(description="bytes actually written, cut downloads included")


class Stats(Answer):
    channel: ChannelStats
    artifacts: ArtifactsServed
