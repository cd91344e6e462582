"""Ending devices' live MQTT sessions when they are revoked (delete, reset).

The notifier calls ``app[SESSIONS].end(device_ids)`` after a revocation commits. Each broker
kind provides its own ``SessionControl``: the embedded broker closes the connections itself;
for Mosquitto see ``edge_server/mosquitto.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class SessionControl(Protocol):
    async def end(self, device_ids: Sequence[str]) -> None:
        """End the live MQTT sessions of these devices, within seconds."""


class NoSessionControl:
    """Until a broker registers its own control (set up in ``app.py``)."""

    async def end(self, device_ids: Sequence[str]) -> None:
        return None
