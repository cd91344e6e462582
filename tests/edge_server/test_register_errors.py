"""Every row of the bad-input table, each with its own test, against a real server."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import (
    CertificateSigningRequestBuilder,
    Name,
    NameAttribute,
    load_pem_x509_csr,
)
from cryptography.x509.oid import NameOID

from tests.support import Machine, Server


def post_register(server: Server, body: Any = None, **kw: Any) -> requests.Response:
    return server.request("POST", "/api/v1/register", json=body, **kw)


def assert_error(response: requests.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["detail"]
    if code:
        assert body["error"] == code


def device_count(server: Server) -> int:
    return int(server.api("GET", "/api/v1/devices").json()["total"])


def token_uses(server: Server, token_id: str) -> int:
    return int(server.api("GET", f"/api/v1/tokens/{token_id}").json()["uses"])


def test_malformed_token_is_refused_with_400(shared_server: Server) -> None:
    body = Machine().request("crl1.nothex.abc.def")
    assert_error(post_register(shared_server, body), 400, "malformed_token")


def test_unknown_token_is_refused_with_401(shared_server: Server) -> None:
    real = shared_server.create_token()["token"]
    prefix, fp, token_id, _ = real.split(".")
    forged = f"{prefix}.{fp}.{token_id}.{'A' * 43}"
    assert_error(post_register(shared_server, Machine().request(forged)), 401, "unknown_token")
    other_id = f"{prefix}.{fp}.zzzzzzzzzz.{'A' * 43}"
    assert_error(post_register(shared_server, Machine().request(other_id)), 401, "unknown_token")


def test_token_for_another_ca_is_refused_with_401(shared_server: Server) -> None:
    real = shared_server.create_token()["token"]
    prefix, _, token_id, secret = real.split(".")
    wrong_ca = f"{prefix}.{'0' * 64}.{token_id}.{secret}"
    assert_error(post_register(shared_server, Machine().request(wrong_ca)), 401, "unknown_token")


def test_expired_token_is_refused_with_401(shared_server: Server) -> None:
    token = shared_server.create_token(ttl_seconds=1)
    time.sleep(1.5)
    response = post_register(shared_server, Machine().request(token["token"]))
    assert_error(response, 401, "expired_token")
    assert token_uses(shared_server, token["id"]) == 0


def test_revoked_token_is_refused_with_401(shared_server: Server) -> None:
    token = shared_server.create_token()
    assert shared_server.api("DELETE", f"/api/v1/tokens/{token['id']}").ok
    response = post_register(shared_server, Machine().request(token["token"]))
    assert_error(response, 401, "revoked_token")


def test_token_with_no_uses_left_is_refused_with_409(shared_server: Server) -> None:
    token = shared_server.create_token(max_uses=1)
    assert post_register(shared_server, Machine().request(token["token"])).status_code == 201
    before = device_count(shared_server)
    assert_error(
        post_register(shared_server, Machine().request(token["token"])), 409, "token_exhausted"
    )
    assert device_count(shared_server) == before
    assert token_uses(shared_server, token["id"]) == 1


def test_malformed_csr_is_refused_with_400(shared_server: Server) -> None:
    token = shared_server.create_token()
    for csr in (
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        body = Machine().request(token["token"], csr=csr)
        assert_error(post_register(shared_server, body), 400, "bad_csr")
    assert token_uses(shared_server, token["id"]) == 0


def test_csr_with_a_bad_signature_is_refused_with_400(shared_server: Server) -> None:
    token = shared_server.create_token()
    machine = Machine()
    pem = machine.request(token["token"])["csr"]
    der = bytearray(load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # flip bits inside the signature
    b64 = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"
    assert_error(
        post_register(shared_server, machine.request(token["token"], csr=tampered)), 400, "bad_csr"
    )


def test_rsa_1024_key_is_refused_with_400(shared_server: Server) -> None:
    token = shared_server.create_token()
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "weak")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    response = post_register(shared_server, Machine().request(token["token"], csr=csr))
    assert_error(response, 400, "bad_csr")
    assert "RSA-1024" in response.json()["detail"]


def test_body_over_64_kib_is_refused_with_413(shared_server: Server) -> None:
    token = shared_server.create_token()
    body = Machine().request(token["token"])
    body["facts"]["hostname"] = "x" * (70 * 1024)
    assert_error(post_register(shared_server, body), 413, "payload_too_large")
    # Streamed without a Content-Length, the limit still holds.
    data = json.dumps(body).encode()
    streamed = iter([data[:1000], data[1000:]])
    headers = {"Content-Type": "application/json"}
    response = post_register(shared_server, data=streamed, headers=headers)
    assert_error(response, 413, "payload_too_large")


def test_wrong_content_type_is_refused_with_415(shared_server: Server) -> None:
    token = shared_server.create_token()
    body = json.dumps(Machine().request(token["token"]))
    response = post_register(shared_server, data=body, headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")


def test_facts_with_wrong_types_are_refused_with_400(shared_server: Server) -> None:
    token = shared_server.create_token()
    before = device_count(shared_server)
    for facts_patch in (
        {"cpu": {"count": "four"}},
        {"memory": {"total_bytes": 1.5}},
        {"disks": [{"name": "sda", "size_bytes": "big"}]},
        {"dmi": {"product_uuid": 42}},
        {"nics": "eth0"},
    ):
        body = Machine().request(token["token"])
        body["facts"].update(facts_patch)
        assert_error(post_register(shared_server, body), 400, "invalid_document")
    assert device_count(shared_server) == before
    assert token_uses(shared_server, token["id"]) == 0


def test_body_that_is_not_json_is_refused_with_400(shared_server: Server) -> None:
    headers = {"Content-Type": "application/json"}
    response = post_register(shared_server, data=b"{not json", headers=headers)
    assert_error(response, 400, "invalid_json")


def test_unsupported_protocol_version_is_refused_with_400(shared_server: Server) -> None:
    token = shared_server.create_token()
    body = Machine().request(token["token"], protocol_version=99)
    assert_error(post_register(shared_server, body), 400, "unsupported_protocol")


def test_operator_call_without_api_token_is_refused_with_401(shared_server: Server) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer crla.000000000000.wrongsecret"},
    ):
        response = requests.get(
            f"{shared_server.url}/api/v1/devices",
            headers=headers,
            verify=str(shared_server.ca),
            timeout=30,
        )
        assert_error(response, 401)
    response = requests.post(
        f"{shared_server.url}/api/v1/tokens", json={}, verify=str(shared_server.ca), timeout=30
    )
    assert_error(response, 401)


def test_revoked_api_token_is_refused_with_401(shared_server: Server) -> None:
    created = shared_server.api("POST", "/api/v1/api-tokens", {"description": "ci"})
    assert created.status_code == 201
    new = created.json()
    assert shared_server.api("GET", "/api/v1/devices", token=new["token"]).status_code == 200
    assert shared_server.api("DELETE", f"/api/v1/api-tokens/{new['id']}").ok
    response = shared_server.api("GET", "/api/v1/devices", token=new["token"])
    assert_error(response, 401, "revoked_api_token")


def test_failed_registration_leaves_no_device_and_no_used_count(shared_server: Server) -> None:
    token = shared_server.create_token(max_uses=5, name_template="edge-${dmi.product_uuid:8}")
    before = device_count(shared_server)
    bad = Machine().request(token["token"], labels={"bad key!": "x"})
    assert_error(post_register(shared_server, bad), 400)
    assert device_count(shared_server) == before
    assert token_uses(shared_server, token["id"]) == 0


def test_more_than_20_failures_a_minute_get_429(server: Server) -> None:
    body = Machine().request("crl1.garbage")
    statuses = [post_register(server, body).status_code for _ in range(25)]
    assert statuses[:20] == [400] * 20
    assert set(statuses[20:]) == {429}
    response = post_register(server, body)
    assert_error(response, 429, "rate_limited")
    # Even a good token is refused from that address until failures age out.
    token = server.create_token()
    assert post_register(server, Machine().request(token["token"])).status_code == 429
