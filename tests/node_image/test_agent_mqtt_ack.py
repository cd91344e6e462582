"""A real agent process whose MQTT session accepts its status but never brings the server's
acknowledgement: it must treat that session as broken and connect again (not keep it until
the 600 s poll), while its status still reaches the server over HTTPS."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_server.pki import Pki
from tests.conftest import make_server
from tests.mqtt_support import HOST, start_mosquitto
from tests.support import start_agent


def wait_until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


def test_agent_reconnects_when_its_status_is_not_acknowledged_over_mqtt(tmp_path: Path) -> None:
    """Devices are sent to a Mosquitto with the server's CA that the server does not use: it
    acknowledges the agent's PUBLISH, and no server ever answers."""
    (tmp_path / "server").mkdir()
    server = make_server(tmp_path / "server")
    deaf = proc = None
    try:
        ca = Pki(server.data_dir / "pki").load_ca()
        deaf = start_mosquitto(tmp_path / "deaf", ca)
        server.env["CORRAL_MQTT_PUBLIC_URL"] = f"mqtts://{HOST}:{deaf.port}"
        server.stop()
        server.start()
        token = server.create_token()["token"]
        seed = tmp_path / "seed.json"
        seed.write_text(json.dumps({"server": server.url, "token": token}))
        log = tmp_path / "agent.log"
        proc = start_agent(tmp_path / "state", seed, tmp_path / "device", log)

        def connects() -> int:
            return log.read_text().count("MQTT connected to") if log.exists() else 0

        # The first status must go out with MQTT up: when the spec pull beats the MQTT
        # connect, status 1 goes over HTTPS and no later status comes (polls are 600 s apart
        # while connected). So the server holds the pull until the agent has connected.
        wait_until("registered", lambda: log.exists() and "registered as" in log.read_text(), 60)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            wait_until("the agent on the deaf broker", lambda: connects() >= 1, 20)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_until("an unacknowledged status", lambda: "not acknowledged" in log.read_text(), 30)
        wait_until("a new MQTT session", lambda: connects() >= 2, 30)
        text = log.read_text()
        assert "MQTT session dropped: status 1 not acknowledged" in text, text
        device_id = json.loads((tmp_path / "state" / "identity.json").read_text())["device_id"]
        shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
        assert shown["reported"]["acked_seq"] >= 1  # over HTTPS
        assert "Traceback" not in text
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if deaf is not None:
            deaf.stop()
        server.stop_all()
    assert "Traceback" not in server.log()
