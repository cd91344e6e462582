"""The agent's settings, its identity on disk, and the status of its last reconcile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node_image.agent.state import StateDir
from node_image.errors import AgentError

if TYPE_CHECKING:  # the settings load without them: a first boot registers before it needs them
    from node_image.agent.reconcilers import ReconcilerFactory
    from registration.desired import Condition


@dataclass(frozen=True)
class AgentSettings:
    #: Seconds between spec pulls while MQTT is down or absent (jittered by ``jitter``).
    poll_interval: float = 30.0
    #: Seconds between safety pulls while MQTT is up and delivering nudges.
    poll_interval_connected: float = 600.0
    jitter: float = 0.2
    #: Backoff after a failed HTTPS call (pull or status), doubling up to the cap.
    http_backoff_base: float = 2.0
    http_backoff_cap: float = 300.0
    #: Backoff between retries of a reconcile that reported an Error condition.
    retry_backoff_base: float = 5.0
    retry_backoff_cap: float = 600.0
    #: Backoff between registration attempts.
    register_backoff_cap: float = 600.0
    #: Use MQTT when the server offers it; HTTPS polling alone converges too.
    mqtt: bool = True
    #: A dead MQTT session is dropped within 2 × keepalive + 2 ticks (see ``MqttSettings``).
    mqtt_keepalive: int = 15
    mqtt_timeout: float = 10.0
    mqtt_backoff_base: float = 1.0
    mqtt_backoff_cap: float = 30.0
    #: How long a status sent over MQTT may go unacknowledged before it goes over HTTPS.
    ack_timeout: float = 10.0
    http_timeout: float = 30.0
    #: Status events per batch (the protocol allows 1000).
    batch_size: int = 500
    #: None: every reconciler (``node_image.agent.reconcilers.REGISTRY``).
    reconcilers: tuple[ReconcilerFactory, ...] | None = None


@dataclass(frozen=True)
class Identity:
    device_id: str
    api: str
    mqtt: str | None

    @classmethod
    def load(cls, state: StateDir) -> Identity | None:
        data = state.read_identity()
        if data is None:
            return None
        endpoints = data.get("endpoints") or {}
        api = endpoints.get("api") or data.get("server")
        if not isinstance(api, str):
            raise AgentError(f"{state.identity} names no API endpoint; register again")
        return cls(device_id=str(data["device_id"]), api=api, mqtt=endpoints.get("mqtt"))


@dataclass(frozen=True)
class AgentStatus:
    """The last reconcile's result: the generation it attempted and its conditions."""

    observed_generation: int = 0
    conditions: tuple[Condition, ...] = ()
    #: The outbox event that reported it (0: not reported yet).
    seq: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.conditions) and all(c.status != "Error" for c in self.conditions)

    def same_report(self, generation: int, conditions: Sequence[Condition]) -> bool:
        return self.seq > 0 and (generation, tuple(conditions)) == (
            self.observed_generation,
            self.conditions,
        )
