"""Identity and inventory against a real server: idempotence, hijacking, revocation, mTLS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests.support import Machine, Server


def register(server: Server, machine: Machine, token: str, **kw: Any) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/register",
        json=machine.request(token, **kw),
        verify=str(server.ca),
        timeout=30,
    )


def whoami(server: Server, device_id: str, cert: tuple[str, str]) -> requests.Response:
    return requests.get(
        f"{server.url}/api/v1/devices/{device_id}/whoami",
        cert=cert,
        verify=str(server.ca),
        timeout=30,
    )


def test_same_machine_registering_again_keeps_its_record(server: Server, tmp_path: Path) -> None:
    token = server.create_token(max_uses=1)
    machine = Machine()
    first = register(server, machine, token["token"])
    assert first.status_code == 201
    second = register(server, machine, token["token"], labels={"rack": "r7"})
    assert second.status_code == 200, second.text
    a, b = first.json(), second.json()
    assert a["device_id"] == b["device_id"] and not b["created"]
    assert a["serial"] != b["serial"]
    assert b["labels"] == {"rack": "r7"}
    assert server.api("GET", f"/api/v1/tokens/{token['id']}").json()["uses"] == 1
    assert server.api("GET", "/api/v1/devices").json()["total"] == 1
    # The old certificate stays valid until it expires; so does the new one.
    old = machine.write_identity(tmp_path / "old", a)
    new = machine.write_identity(tmp_path / "new", b)
    assert whoami(server, a["device_id"], old).status_code == 200
    assert whoami(server, a["device_id"], new).json()["serial"] == b["serial"]


def test_another_key_claiming_a_known_machine_gets_409(server: Server, tmp_path: Path) -> None:
    token = server.create_token(max_uses=5)
    owner = Machine()
    first = register(server, owner, token["token"]).json()
    thief = Machine(dmi_uuid=owner.dmi_uuid)
    response = register(server, thief, token["token"])
    assert response.status_code == 409
    assert response.json()["error"] == "device_key_mismatch"
    assert server.api("GET", "/api/v1/tokens/" + token["id"]).json()["uses"] == 1
    # After an operator reset, the new key takes the record over; the old cert is revoked.
    assert server.api("POST", f"/api/v1/devices/{first['device_id']}/reset").ok
    taken = register(server, thief, token["token"])
    assert taken.status_code == 200
    assert taken.json()["device_id"] == first["device_id"]
    old_cert = owner.write_identity(tmp_path / "owner", first)
    assert whoami(server, first["device_id"], old_cert).status_code == 403
    new_cert = thief.write_identity(tmp_path / "thief", taken.json())
    assert whoami(server, first["device_id"], new_cert).status_code == 200


def test_deleted_device_certificate_gets_403(server: Server, tmp_path: Path) -> None:
    token = server.create_token()
    machine = Machine()
    answer = register(server, machine, token["token"]).json()
    cert = machine.write_identity(tmp_path, answer)
    assert whoami(server, answer["device_id"], cert).status_code == 200
    result = server.corral("device", "delete", answer["device_id"])
    assert answer["device_id"] in result.stdout
    response = whoami(server, answer["device_id"], cert)
    assert response.status_code == 403
    assert response.json()["error"] == "certificate_revoked"


def test_device_cannot_call_whoami_for_another_device(server: Server, tmp_path: Path) -> None:
    token = server.create_token(max_uses=2)
    a, b = Machine(), Machine()
    answer_a = register(server, a, token["token"]).json()
    answer_b = register(server, b, token["token"]).json()
    cert_a = a.write_identity(tmp_path / "a", answer_a)
    response = whoami(server, answer_b["device_id"], cert_a)
    assert response.status_code == 403
    assert response.json()["error"] == "wrong_device"


def test_whoami_without_a_client_certificate_is_refused(server: Server) -> None:
    response = requests.get(
        f"{server.url}/api/v1/devices/dev-000000000000/whoami", verify=str(server.ca), timeout=30
    )
    assert response.status_code == 401
    assert response.json()["error"] == "no_client_cert"


def test_certificate_from_another_ca_is_refused_by_tls(server: Server, tmp_path: Path) -> None:
    from registration import identity

    rogue = identity.CertificateAuthority.create("Rogue CA")
    key = identity.generate_key()
    cert = rogue.issue_device("dev-000000000000", key.public_key(), identity.new_serial())
    (tmp_path / "c.pem").write_bytes(identity.cert_to_pem(cert))
    (tmp_path / "k.pem").write_bytes(identity.key_to_pem(key))
    try:
        response = whoami(
            server, "dev-000000000000", (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
        )
    except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
        # TLS 1.3 reports the refused client certificate after the handshake, as a reset.
        return
    raise AssertionError(f"TLS accepted a rogue certificate: {response.status_code}")


def test_names_and_labels_come_from_token_templates(server: Server) -> None:
    token = server.create_token(
        group="store-eu",
        labels={"site": "eu", "model": "${dmi.product_uuid:4}"},
        name_template="edge-${dmi.product_uuid:8}",
    )
    machine = Machine(dmi_uuid="ABCDEF12-3456-7890-ABCD-EF1234567890")
    answer = register(server, machine, token["token"], labels={"site": "local", "role": "kiosk"})
    body = answer.json()
    assert body["name"] == "edge-ABCDEF12"
    assert body["group"] == "store-eu"
    # Token labels win over the device's own labels.
    assert body["labels"] == {"model": "ABCD", "role": "kiosk", "site": "eu"}


def test_list_filters_by_selector_and_pages(server: Server) -> None:
    eu = server.create_token(labels={"site": "eu"}, max_uses=None)
    us = server.create_token(labels={"site": "us"}, max_uses=None)
    for i in range(5):
        register(server, Machine(), eu["token"], labels={"role": "test" if i < 2 else "prod"})
        register(server, Machine(), us["token"])
    out = json.loads(
        server.corral("device", "list", "-l", "site=eu,role!=test", "-o", "json").stdout
    )
    assert len(out) == 3
    assert all(d["labels"]["site"] == "eu" and d["labels"]["role"] == "prod" for d in out)
    assert len(json.loads(server.corral("device", "list", "-l", "!role", "-o", "json").stdout)) == 5
    page1 = server.api("GET", "/api/v1/devices", params={"limit": 4}).json()
    page2 = server.api("GET", "/api/v1/devices", params={"limit": 4, "after": page1["next"]}).json()
    page3 = server.api("GET", "/api/v1/devices", params={"limit": 4, "after": page2["next"]}).json()
    ids = [d["id"] for d in page1["items"] + page2["items"] + page3["items"]]
    assert len(ids) == 10 == len(set(ids)) == page1["total"]
    assert page3["next"] is None
    # The CLI follows the pages by itself.
    assert len(json.loads(server.corral("device", "list", "-o", "json").stdout)) == 10


def test_operator_labels_win_and_survive_reregistration(server: Server) -> None:
    token = server.create_token(labels={"site": "eu"})
    machine = Machine()
    device_id = register(server, machine, token["token"]).json()["device_id"]
    server.corral("device", "label", device_id, "site=lab", "tier=gold")
    register(server, machine, token["token"])
    shown = json.loads(server.corral("device", "show", device_id, "-o", "json").stdout)
    assert shown["labels"] == {"site": "lab", "tier": "gold"}
    server.corral("device", "label", device_id, "tier-")
    shown = json.loads(server.corral("device", "show", device_id, "-o", "json").stdout)
    assert shown["labels"] == {"site": "lab"}


def test_token_list_never_shows_the_secret(server: Server) -> None:
    created = json.loads(
        server.corral(
            "token", "create", "--uses", "50", "--ttl", "24h", "--group", "g", "-o", "json"
        ).stdout
    )
    secret = created["token"].split(".")[-1]
    listing = server.corral("token", "list", "-o", "json").stdout
    table = server.corral("token", "list").stdout
    assert created["id"] in listing and created["id"] in table
    assert secret not in listing and secret not in table
    assert "secret_hash" not in listing
    assert json.loads(listing)[0]["max_uses"] == 50


def test_cli_errors_are_one_line_and_nonzero(server: Server) -> None:
    result = server.corral("device", "show", "dev-nope", check=False)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "not_found" in result.stderr
    assert "Traceback" not in result.stderr
    result = server.corral("token", "create", "--ttl", "soon", check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    result = server.corral("--server", "https://127.0.0.1:1", "device", "list", check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1


def test_openapi_document_is_valid_and_covers_every_route(server: Server) -> None:
    from openapi_spec_validator import validate

    doc = requests.get(
        f"{server.url}/api/v1/openapi.json", verify=str(server.ca), timeout=30
    ).json()
    validate(doc)
    from edge_server import api

    for route in api.routes():
        path = route.path  # type: ignore[attr-defined]
        assert route.method.lower() in doc["paths"][path], (route.method, path)  # type: ignore[attr-defined]
