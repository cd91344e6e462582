"""Certificate renewal against a real server process: devices renew over mTLS, and the server
renews its own HTTPS and MQTT client certificates while it runs."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from edge_server import bootstrap, settings
from edge_server.pki import MQTT_IDENTITY, Pki, write_public
from registration import identity
from registration.desired import nudge_topic
from tests.conftest import make_server
from tests.edge_server.test_devices import whoami
from tests.mqtt_support import mosquitto_sub
from tests.node_image.test_agent_run import wait_until
from tests.support import Machine, Server, free_port

LIFETIME = 60  # seconds: the short device certificate lifetime these tests set


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[Server]:
    """A server that issues device certificates for a minute."""
    srv = make_server(tmp_path, CORRAL_DEVICE_CERT_LIFETIME=f"{LIFETIME}s")
    try:
        yield srv
    finally:
        srv.stop_all()
    assert "Traceback" not in srv.log(), srv.log()[-4000:]


def register(server: Server, machine: Machine) -> dict[str, Any]:
    token = server.create_token()["token"]
    response = requests.post(
        f"{server.url}/api/v1/register",
        json=machine.request(token),
        verify=str(server.ca),
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


def renew(
    server: Server, device_id: str, cert: tuple[str, str] | None, csr: bytes | str
) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/devices/{device_id}/certificate",
        json={"csr": csr.decode() if isinstance(csr, bytes) else csr},
        cert=cert,
        verify=str(server.ca),
        timeout=30,
    )


def write_pair(directory: Path, name: str, pem: str, key: identity.PrivateKey) -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.pem").write_text(pem)
    (directory / f"{name}-key.pem").write_bytes(identity.key_to_pem(key))
    return str(directory / f"{name}.pem"), str(directory / f"{name}-key.pem")


def serials(server: Server, device_id: str) -> list[str]:
    response = server.api("GET", f"/api/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    return [c["serial"] for c in response.json()["certificates"]]


def test_device_renews_over_mtls_and_both_certificates_stay_valid(
    short_lived: Server, tmp_path: Path
) -> None:
    machine = Machine()
    first = register(short_lived, machine)
    device_id = first["device_id"]
    old = write_pair(tmp_path, "old", first["certificate"], machine.key)
    old_cert = identity.cert_from_pem(first["certificate"].encode())
    # The lifetime setting applies to registration (plus a tenth backdated for clock skew).
    assert old_cert.not_valid_after_utc - old_cert.not_valid_before_utc == dt.timedelta(
        seconds=LIFETIME * 1.1
    )

    # Same key: a new certificate for the same device, its serial recorded.
    response = renew(short_lived, device_id, old, identity.make_csr(machine.key))
    assert response.status_code == 200, response.text
    body = response.json()
    new_cert = identity.cert_from_pem(body["certificate"].encode())
    assert identity.common_name(new_cert) == device_id
    assert str(new_cert.serial_number) == body["serial"] != first["serial"]
    assert identity.same_public_key(new_cert, machine.key)
    assert body["ca"] == short_lived.ca.read_text()
    assert body["not_after"] == new_cert.not_valid_after_utc.timestamp()
    assert sorted(serials(short_lived, device_id)) == sorted([first["serial"], body["serial"]])

    # Both work for mTLS: the old one until it expires.
    new = write_pair(tmp_path, "new", body["certificate"], machine.key)
    assert whoami(short_lived, device_id, new).json()["serial"] == body["serial"]
    assert whoami(short_lived, device_id, old).json()["serial"] == first["serial"]

    # A new key: the device is known by it from now on, so registering again with it finds
    # the same record instead of a 409.
    rotated = identity.generate_key()
    response = renew(short_lived, device_id, new, identity.make_csr(rotated))
    assert response.status_code == 200, response.text
    assert identity.same_public_key(
        identity.cert_from_pem(response.json()["certificate"].encode()), rotated
    )
    again = register(short_lived, Machine(dmi_uuid=machine.dmi_uuid, key=rotated))
    assert again["device_id"] == device_id and not again["created"]


def test_revoked_deleted_and_foreign_certificates_cannot_renew(
    short_lived: Server, tmp_path: Path
) -> None:
    a, b = Machine(), Machine()
    first_a, first_b = register(short_lived, a), register(short_lived, b)
    cert_a = write_pair(tmp_path, "a", first_a["certificate"], a.key)
    csr = identity.make_csr(a.key)

    # No client certificate, another device's path, a bad CSR.
    response = renew(short_lived, first_a["device_id"], None, csr)
    assert response.status_code == 401 and response.json()["error"] == "no_client_cert"
    response = renew(short_lived, first_b["device_id"], cert_a, csr)
    assert response.status_code == 403 and response.json()["error"] == "wrong_device"
    response = renew(short_lived, first_a["device_id"], cert_a, "not a csr")
    assert response.status_code == 400 and response.json()["error"] == "bad_csr"

    # Reset: the certificates are revoked, renewal is refused.
    short_lived.corral("device", "reset", first_a["device_id"])
    response = renew(short_lived, first_a["device_id"], cert_a, csr)
    assert response.status_code == 403 and response.json()["error"] == "certificate_revoked"

    # Deleted: the same.
    cert_b = write_pair(tmp_path, "b", first_b["certificate"], b.key)
    short_lived.corral("device", "delete", first_b["device_id"])
    response = renew(short_lived, first_b["device_id"], cert_b, identity.make_csr(b.key))
    assert response.status_code == 403 and response.json()["error"] == "certificate_revoked"
    assert len(serials(short_lived, first_a["device_id"])) == 1


# --- the server's own certificates ------------------------------------------------------


def served_certificate(port: int, ca: Path) -> x509.Certificate:
    """The certificate a new TLS handshake on ``port`` gets."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def near_expiry_server(tmp_path: Path, seconds: int) -> tuple[Server, int, int]:
    """A data dir whose HTTPS and MQTT client certificates expire in ``seconds``, as if the
    server had been running for 27 months; returns the server (not started) and the serials."""
    server = Server(data_dir=tmp_path / "data", port=free_port())
    config = settings.load(data_dir=str(server.data_dir), listen=f"127.0.0.1:{server.port}")
    bootstrap.prepare(config)
    pki = Pki(config.pki_dir)
    ca = pki.load_ca()
    lifetime = dt.timedelta(seconds=seconds)
    key = identity.key_from_pem(pki.server_key_path.read_bytes())
    cert = ca.issue_server(key, config.server_names(), lifetime=lifetime)
    write_public(pki.server_cert_path, identity.cert_to_pem(cert))
    client_key = identity.key_from_pem(pki.mqtt_client_key_path.read_bytes())
    client = ca.issue_client(client_key, MQTT_IDENTITY, lifetime=lifetime)
    write_public(pki.mqtt_client_cert_path, identity.cert_to_pem(client))
    return server, cert.serial_number, client.serial_number


def test_server_renews_its_own_certificates_without_a_restart(tmp_path: Path) -> None:
    # They expire in 60 s and the window is 40 s: not due at start, due about 20 s later.
    server, https_serial, client_serial = near_expiry_server(tmp_path, 60)
    server.env = {
        "CORRAL_SERVER_CERT_RENEW_BEFORE": "40s",
        "CORRAL_SERVER_CERT_CHECK_INTERVAL": "1s",
    }
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        pki = Pki(server.data_dir / "pki")
        before = served_certificate(server.port, server.ca)
        assert before.serial_number == https_serial
        assert served_certificate(server.mqtt_port, server.ca).serial_number == https_serial

        renewed = wait_until(
            "a renewed HTTPS certificate",
            lambda: (
                (c := served_certificate(server.port, server.ca)).serial_number != https_serial
                and c
            ),
            timeout=60,
        )
        # The same process, a new handshake, a certificate good for 27 months again.
        assert server.proc is not None and server.proc.pid == pid and server.proc.poll() is None
        assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
        assert (
            renewed.serial_number
            == identity.cert_from_pem(pki.server_cert_path.read_bytes()).serial_number
        )
        # The embedded broker serves it too.
        broker = served_certificate(server.mqtt_port, server.ca)
        assert broker.serial_number == renewed.serial_number

        # The MQTT channel came back with its renewed client certificate...
        assert pki.mqtt_client_serial() != client_serial
        wait_until(
            "the channel to reconnect",
            lambda: (
                (s := server.api("GET", "/api/v1/stats").json()["channel"])["connected"]
                and s["connects"] >= 2
            ),
            timeout=30,
        )
        # ...and still delivers: a spec change reaches a device over MQTT as a nudge.
        machine = Machine()
        answer = register(server, machine)
        device_id = answer["device_id"]
        cert, key = write_pair(tmp_path, "device", answer["certificate"], machine.key)
        response = server.api(
            "PUT",
            f"/api/v1/devices/{device_id}/override",
            {"config": [{"path": "/etc/x", "content": "x", "mode": 420}]},
        )
        assert response.status_code == 200, response.text
        generation = response.json()["generation"]
        argv = mosquitto_sub(
            server.mqtt_port,
            server.ca,
            Path(cert),
            Path(key),
            [nudge_topic(device_id)],
            client_id=device_id,
            count=1,
            wait=10,
        )
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert f'"generation":{generation}' in out.stdout, (out.stdout, out.stderr)
    finally:
        server.stop_all()
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert "renewed the server certificate" in log
    assert "renewed the MQTT client certificate" in log


def test_certificates_near_expiry_at_start_are_renewed_before_serving(tmp_path: Path) -> None:
    server, https_serial, client_serial = near_expiry_server(tmp_path, 600)
    try:
        server.start()  # the default window: 30 days
        served = served_certificate(server.port, server.ca)
        assert served.serial_number != https_serial
        assert served.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
        assert Pki(server.data_dir / "pki").mqtt_client_serial() != client_serial
    finally:
        server.stop_all()


def test_lifetimes_come_from_flags_env_and_config_and_bad_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"device_cert_lifetime": "90d", "server_cert_check_interval": "6h"})
    )
    monkeypatch.setenv("CORRAL_SERVER_CERT_RENEW_BEFORE", "14d")
    loaded = settings.load(data_dir=str(tmp_path))
    assert loaded.device_cert_lifetime == dt.timedelta(days=90)
    assert loaded.server_cert_renew_before == dt.timedelta(days=14)
    assert loaded.server_cert_check_interval == dt.timedelta(hours=6)
    flagged = settings.load(data_dir=str(tmp_path), device_cert_lifetime="45s")
    assert flagged.device_cert_lifetime == dt.timedelta(seconds=45)
    for bad in ("never", "soon", "-5d"):
        monkeypatch.setenv("CORRAL_DEVICE_CERT_LIFETIME", bad)
        with pytest.raises(settings.SettingsError, match="device_cert_lifetime"):
            settings.load(data_dir=str(tmp_path))
