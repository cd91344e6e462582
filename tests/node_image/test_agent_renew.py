"""A real ``corral-agent run`` renews its certificate against a real server whose device
certificates last 36 seconds (embedded broker and Mosquitto)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from registration import identity
from tests.conftest import make_server
from tests.edge_server.test_devices import whoami
from tests.node_image.test_agent_run import config, device, set_group, wait_until, write_seed
from tests.support import Server, start_agent

LIFETIME = 36  # seconds; renewal is due after 24


@pytest.fixture(params=["embedded", "mosquitto"])
def short_lived(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path, broker=request.param, CORRAL_DEVICE_CERT_LIFETIME=f"{LIFETIME}s")
    try:
        yield srv
    finally:
        srv.stop_all()
    assert "Traceback" not in srv.log(), srv.log()[-4000:]


def certificates(server: Server, device_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = device(server, device_id)["certificates"]
    return listed


def test_agent_renews_after_two_thirds_and_the_old_certificate_lasts_until_expiry(
    short_lived: Server, tmp_path: Path
) -> None:
    server = short_lived
    set_group(server, "shop", "site=shop", config(("/etc/shop.conf", "v1", 0o644)))
    seed = write_seed(server, tmp_path / "seed.json", site="shop")
    state, simulated, log = tmp_path / "state", tmp_path / "device", tmp_path / "agent.log"
    proc = start_agent(state, seed, simulated, log)
    try:
        device_id = wait_until(
            "registration",
            lambda: (
                (state / "identity.json").exists()
                and json.loads((state / "identity.json").read_text())["device_id"]
            ),
        )
        old = tmp_path / "old.pem"
        shutil.copy(state / "device.pem", old)
        old_cert = identity.cert_from_pem(old.read_bytes())
        key = state / "device-key.pem"
        wait_until("generation 1", lambda: device(server, device_id)["in_sync"])

        # The agent renews once two thirds of the lifetime has passed; the server records it.
        listed = wait_until(
            "a renewal", lambda: len(c := certificates(server, device_id)) >= 2 and c, timeout=60
        )
        assert str(old_cert.serial_number) in {c["serial"] for c in listed}
        assert all(c["revoked_at"] is None for c in listed)
        start = old_cert.not_valid_before_utc.timestamp()
        lifetime = old_cert.not_valid_after_utc.timestamp() - start
        renewed = next(c for c in listed if c["serial"] != str(old_cert.serial_number))
        issued = renewed["issued_at"] + lifetime / 11  # notBefore is backdated a tenth
        assert issued >= start + lifetime * 2 / 3 - 1.5

        # It wrote the new certificate (and its serial) and uses it for HTTPS.
        new_serial = wait_until(
            "the new certificate on disk",
            lambda: (
                (s := identity.cert_from_pem((state / "device.pem").read_bytes()).serial_number)
                != old_cert.serial_number
                and str(s)
            ),
        )
        assert new_serial in {c["serial"] for c in certificates(server, device_id)}
        # identity.json is written just after device.pem (a second atomic write): wait for it.
        wait_until(
            "the new serial in identity.json",
            lambda: json.loads((state / "identity.json").read_text())["serial"] == new_serial,
        )
        assert whoami(server, device_id, (str(state / "device.pem"), str(key))).status_code == 200

        # The old certificate still works until it expires...
        assert time.time() < old_cert.not_valid_after_utc.timestamp(), "test too slow"
        response = whoami(server, device_id, (str(old), str(key)))
        assert response.status_code == 200 and response.json()["serial"] == str(
            old_cert.serial_number
        )
        # ...and MQTT reconnected with the new one.
        wait_until(
            "MQTT to reconnect after the renewal",
            lambda: (
                "MQTT connected" in log.read_text().split("renewed the device certificate", 1)[-1]
                and "renewed the device certificate" in log.read_text()
            ),
        )
        wait_until("online", lambda: device(server, device_id)["online"])

        # Once the old certificate has expired, TLS refuses it; the agent carries on.
        time.sleep(max(0.0, old_cert.not_valid_after_utc.timestamp() - time.time() + 1))
        with pytest.raises(requests.exceptions.ConnectionError):  # TLS 1.3: an alert, then EOF
            whoami(server, device_id, (str(old), str(key)))
        set_group(server, "shop", "", config(("/etc/shop.conf", "v2", 0o600)))
        wait_until(
            "generation 2 acknowledged",
            lambda: (
                (r := device(server, device_id)["reported"])["observed_generation"] == 2
                and r["acked_seq"] == 2
            ),
        )
        assert (simulated / "rootfs/etc/shop.conf").read_text() == "v2"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
        assert "certificate renewal failed" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_waiting_for_renewal_does_not_import_cryptography(tmp_path: Path) -> None:
    """An idle agent reads its certificate's validity from identity.json (registration wrote
    it): importing cryptography would cost every agent ~9 MB of RSS (bench/agent_idle.py)."""
    ca = identity.CertificateAuthority.create()
    key = identity.generate_key()
    cert = ca.issue_device("dev-1", key.public_key(), identity.new_serial())
    (tmp_path / "device.pem").write_bytes(identity.cert_to_pem(cert))
    (tmp_path / "device-key.pem").write_bytes(identity.key_to_pem(key))
    before, after = identity.validity(cert)
    dates = {"device_id": "dev-1", "cert_not_before": before, "cert_not_after": after}
    (tmp_path / "identity.json").write_text(json.dumps(dates))
    script = (
        "import sys; from pathlib import Path\n"
        "import node_image.agent.daemon\n"
        "from node_image.agent import renew\n"
        "from node_image.agent.state import StateDir\n"
        f"v = renew.validity(StateDir(Path({str(tmp_path)!r})))\n"
        "print(v.not_before.timestamp(), v.not_after.timestamp())\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography'))[:3])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0].split() == [
        str(cert.not_valid_before_utc.timestamp()),
        str(cert.not_valid_after_utc.timestamp()),
    ]
    assert out[1] == "[]"


def test_renewal_timing_comes_from_identity_and_an_older_state_dir_is_read_once(
    tmp_path: Path,
) -> None:
    """The validity dates are kept in identity.json; a state dir from before that gets them
    from its certificate once, and keeps them."""
    import datetime as dt

    from node_image.agent.renew import RENEW_AT, validity
    from node_image.agent.state import StateDir

    ca = identity.CertificateAuthority.create()
    key = identity.generate_key()
    cert = ca.issue_device("dev-old", key.public_key(), 7, dt.timedelta(days=90))
    state = StateDir(tmp_path / "state", fsync=False)
    state.ensure()
    state.write(state.cert, identity.cert_to_pem(cert))
    state.write(state.key, identity.key_to_pem(key), 0o600)
    state.write_identity({"device_id": "dev-old", "serial": "7"})

    found = validity(state)
    assert found.not_after == cert.not_valid_after_utc
    assert found.renew_at == found.not_before + (found.not_after - found.not_before) * RENEW_AT
    kept = state.read_identity()
    assert kept is not None
    assert kept["cert_not_after"] == cert.not_valid_after_utc.timestamp()
    # From now on the dates come from identity.json, whatever the file holds.
    state.write(state.cert, b"not a certificate")
    assert validity(state) == found
