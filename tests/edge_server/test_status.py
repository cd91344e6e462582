"""Status a device reports is checked against what it was given, over HTTPS and MQTT alike."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from registration.desired import status_topic
from tests.edge_server.test_channel import batch, publish, registered, stats
from tests.support import Server
from tests.waiting import wait_until

AHEAD = 9223372036854775807


def reported(server: Server, device_id: str) -> dict[str, object]:
    shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
    return {
        "generation": shown["desired"]["generation"],
        "observed": shown["reported"]["observed_generation"],
        "acked": shown["reported"]["acked_seq"],
        "in_sync": shown["in_sync"],
    }


def test_observed_generation_ahead_of_the_device_is_refused_over_https(
    server: Server, tmp_path: Path
) -> None:
    device_id, cert = registered(server, tmp_path, "d")
    url = f"{server.url}/api/v1/devices/{device_id}/status"

    def post(body: object) -> requests.Response:
        return requests.post(url, json=body, cert=cert, verify=str(server.ca), timeout=30)

    before = reported(server, device_id)
    assert before["generation"] == 1
    for claimed in (2, AHEAD):
        response = post(batch(1, generation=claimed))
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "observed_generation_ahead"
        assert str(claimed) in response.json()["detail"]
    # Nothing of a refused batch is kept, not even its valid events.
    response = post({"events": [*batch(1)["events"], *batch(2, generation=AHEAD)["events"]]})
    assert response.status_code == 409
    assert reported(server, device_id) == before
    # The same device's honest report still goes through.
    assert post(batch(1)).json() == {"acked_seq": 1, "applied": 1}
    assert reported(server, device_id) == {
        "generation": 1,
        "observed": 1,
        "acked": 1,
        "in_sync": True,
    }


def test_observed_generation_ahead_over_mqtt_is_dropped_and_counted(
    fleet_server: Server, tmp_path: Path
) -> None:
    server = fleet_server
    device_id, cert = registered(server, tmp_path, "d")
    topic = status_topic(device_id)
    assert (
        publish(server, cert, device_id, topic, json.dumps(batch(1, generation=AHEAD))).returncode
        == 0
    )
    wait_until(
        "the batch dropped",
        lambda: stats(server)["drop_reasons"].get("observed_generation_ahead") == 1,
    )
    assert reported(server, device_id)["observed"] == 0
    assert publish(server, cert, device_id, topic, json.dumps(batch(1))).returncode == 0
    wait_until("the honest batch applied", lambda: reported(server, device_id)["observed"] == 1)
    assert stats(server)["drop_reasons"] == {"observed_generation_ahead": 1}
