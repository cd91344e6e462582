"""The one status word a device shows: icon + word + colour, never colour alone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from edge_server.ops.devices import DeviceSummary
from edge_server.web import status

NOW = time.time()


def device(**changes: Any) -> DeviceSummary:
    fields: dict[str, Any] = {
        "id": "dev-1",
        "name": "edge-1",
        "group": "default",
        "labels": {},
        "agent_version": "0.1.0",
        "registered_at": NOW - 3600,
        "updated_at": NOW - 3600,
        "facts": {},
        "online": True,
        "generation": 2,
        "observed_generation": 2,
        "conditions": [{"type": "config", "status": "Applied"}],
        "last_seen": NOW,
        "groups": [],
        "status_at": NOW - 10,
        "revoked": False,
    }
    return DeviceSummary.model_validate({**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({}, "Online"),
        ({"online": False}, "Offline"),
        ({"observed_generation": 1}, "Updating"),
        ({"observed_generation": 1, "status_at": NOW - status.STALE_AFTER - 60}, "Stale"),
        ({"conditions": [{"type": "os", "status": "Progressing"}]}, "Updating"),
        ({"conditions": [{"type": "config", "status": "Error"}]}, "Error"),
        ({"conditions": [{"type": "os", "status": "RolledBack"}], "online": False}, "RolledBack"),
        ({"revoked": True}, "Revoked"),
    ],
)
def test_each_state_has_its_word(changes: dict[str, Any], word: str) -> None:
    shown = status.of(device(**changes), NOW)
    assert shown.word == word
    assert shown.icon and shown.css  # never colour alone: an icon and a word too


def test_a_stuck_device_is_stale_not_green() -> None:
    stuck = device(observed_generation=1, status_at=NOW - 3600)
    assert status.of(stuck, NOW) is status.STALE


def test_an_offline_device_behind_its_spec_says_the_change_is_queued() -> None:
    cells = status.cells(device(online=False, observed_generation=1))
    assert cells["in_sync_text"].startswith("queued:")
    assert cells["generation"] == "1 / 2"
