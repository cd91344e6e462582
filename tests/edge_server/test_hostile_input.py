"""Hostile and malformed input from outside, against a real server over HTTPS.

Each case must get a 4xx with ``{"error", "detail"}`` and leave no traceback in the server log.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.support import Machine, Server


@dataclass(frozen=True)
class Device:
    device_id: str
    cert: tuple[str, str]


@pytest.fixture(scope="module")
def srv(shared_server: Server) -> Server:
    """One server for the module (its log must stay free of tracebacks: see conftest)."""
    return shared_server


@pytest.fixture(scope="module")
def dev(srv: Server, tmp_path_factory: pytest.TempPathFactory) -> Device:
    machine = Machine()
    token = srv.create_token()["token"]
    answer = requests.post(
        f"{srv.url}/api/v1/register", json=machine.request(token), verify=str(srv.ca), timeout=30
    )
    assert answer.status_code == 201, answer.text
    cert = machine.write_identity(tmp_path_factory.mktemp("dev"), answer.json())
    return Device(answer.json()["device_id"], cert)


@pytest.fixture(autouse=True)
def clean_log(srv: Server) -> Iterator[None]:
    """No test here may leave a traceback or an unhandled error in the server log."""
    before = len(srv.log())
    yield
    added = srv.log()[before:]
    assert "Traceback" not in added and "unhandled error" not in added, added[-4000:]


def send(
    srv: Server,
    method: str,
    path: str,
    data: bytes | str,
    cert: tuple[str, str] | None = None,
    token: bool = True,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {srv.admin_token}"
    return requests.request(
        method,
        srv.url + path,
        data=data,
        headers=headers,
        cert=cert,
        verify=str(srv.ca),
        timeout=30,
    )


def assert_error(response: requests.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if code is not None:
        assert body["error"] == code, body


def json_endpoints(srv: Server, dev: Device) -> list[tuple[str, str, tuple[str, str] | None]]:
    """Every endpoint that reads a JSON body, with the credentials it needs."""
    if srv.api("GET", "/api/v1/groups/g1").status_code == 404:
        assert srv.api("POST", "/api/v1/groups", {"name": "g1"}).status_code == 201
    return [
        ("POST", "/api/v1/register", None),
        ("POST", "/api/v1/tokens", None),
        ("PATCH", f"/api/v1/devices/{dev.device_id}/labels", None),
        ("PUT", f"/api/v1/devices/{dev.device_id}/override", None),
        ("POST", f"/api/v1/devices/{dev.device_id}/status", dev.cert),
        ("POST", "/api/v1/groups", None),
        ("PATCH", "/api/v1/groups/g1", None),
        ("POST", "/api/v1/api-tokens", None),
    ]


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_json_nested_deep_is_refused_with_400_on_every_json_endpoint(
    srv: Server, dev: Device, depth: int
) -> None:
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        body = opener * depth + "1" + closer * depth
        for method, path, cert in json_endpoints(srv, dev):
            response = send(srv, method, path, body, cert=cert, token=cert is None)
            if response.status_code == 413:  # past this endpoint's body limit: also fine
                assert len(body) > 64 * 1024
                assert_error(response, 413, "payload_too_large")
            else:
                assert_error(response, 400, "invalid_json")


def test_json_nested_inside_a_field_is_refused_with_400(srv: Server) -> None:
    token = srv.create_token()["token"]
    body = Machine().request(token)
    body["facts"]["dmi"] = json.loads("[" * 200 + "]" * 200)
    response = send(srv, "POST", "/api/v1/register", json.dumps(body), token=False)
    assert_error(response, 400, "invalid_json")


def test_selector_of_1001_terms_is_refused_with_400(srv: Server) -> None:
    selector = ",".join(f"k{i}" for i in range(1001))
    response = srv.api("GET", "/api/v1/devices", params={"selector": selector})
    assert_error(response, 400, "bad_selector")
    assert "terms" in response.json()["detail"]
    from edge_server.selectors import MAX_TERMS

    most = ",".join(f"!k{i}" for i in range(MAX_TERMS))
    assert srv.api("GET", "/api/v1/devices", params={"selector": most}).status_code == 200
    response = srv.api("GET", "/api/v1/devices", params={"selector": most + ",k"})
    assert_error(response, 400, "bad_selector")
    # Written out long (over aiohttp's default 8 KiB request line), it gets the same JSON 400.
    long_form = ",".join(f"site-{i}=value-{i}" for i in range(1001))
    assert len(long_form) > 8192
    response = srv.api("GET", "/api/v1/devices", params={"selector": long_form})
    assert_error(response, 400, "bad_selector")
    group = {"name": "widest", "selector": ",".join(["k"] * MAX_TERMS)}
    assert len(group["selector"]) <= 1024
    assert srv.api("POST", "/api/v1/groups", group).status_code == 201


BIG = str(2**64)


@pytest.mark.parametrize("field", ["max_uses", "ttl_seconds"])
def test_token_integers_beyond_64_bits_are_refused_with_400(srv: Server, field: str) -> None:
    response = send(srv, "POST", "/api/v1/tokens", f'{{"{field}": {BIG}}}')
    assert_error(response, 400, "invalid_document")
    assert field in response.json()["detail"]
    response = send(srv, "POST", "/api/v1/tokens", f'{{"{field}": {2**63 - 1}}}')
    assert response.status_code == 201, response.text


def status_body(observed_generation: str = "0", at: str = "1.5", seq: str = "1") -> str:
    return (
        f'{{"events": [{{"seq": {seq}, "observed_generation": {observed_generation},'
        f' "conditions": [], "at": {at}}}]}}'
    )


@pytest.mark.parametrize(
    ("code", "body"),
    [
        ("invalid_document", status_body(observed_generation=BIG)),
        ("invalid_document", status_body(seq=BIG)),
        ("invalid_json", status_body(at="NaN")),
        ("invalid_json", status_body(at="Infinity")),
        ("invalid_json", status_body(at="-Infinity")),
        ("invalid_json", status_body(at="1e400")),
    ],
)
def test_status_event_out_of_range_numbers_are_refused_with_400(
    srv: Server, dev: Device, code: str, body: str
) -> None:
    path = f"/api/v1/devices/{dev.device_id}/status"
    response = send(srv, "POST", path, body, cert=dev.cert, token=False)
    assert_error(response, 400, code)
    reported = srv.api("GET", f"/api/v1/devices/{dev.device_id}").json()["reported"]
    assert reported["acked_seq"] == 0, reported


@pytest.mark.parametrize(
    "labels",
    [{"site\n": "eu"}, {"site": "eu\n"}, {"example.com/site\n": "eu"}],
)
def test_labels_with_a_trailing_newline_are_refused_with_400(
    srv: Server, dev: Device, labels: dict[str, str]
) -> None:
    path = f"/api/v1/devices/{dev.device_id}/labels"
    assert_error(srv.api("PATCH", path, {"labels": labels}), 400, "invalid_document")
    token = srv.create_token()["token"]
    body = Machine().request(token, labels=labels)
    response = send(srv, "POST", "/api/v1/register", json.dumps(body), token=False)
    assert_error(response, 400, "invalid_document")
    key = next(iter(labels))
    if key.endswith("\n"):
        assert_error(srv.api("POST", "/api/v1/tokens", {"labels": labels}), 400)
    shown = srv.api("GET", f"/api/v1/devices/{dev.device_id}").json()["labels"]
    assert not any(k.endswith("\n") or v.endswith("\n") for k, v in shown.items())


@pytest.mark.parametrize("path", ["//x", "//etc/x", "/etc/a\nb", "/etc/x\n", "/etc/\tx"])
def test_config_paths_that_are_not_plain_absolute_paths_are_refused_with_400(
    srv: Server, dev: Device, path: str
) -> None:
    body = {"config": [{"path": path, "content": "x"}]}
    response = srv.api("PUT", f"/api/v1/devices/{dev.device_id}/override", body)
    assert_error(response, 400, "invalid_document")
    response = srv.api("POST", "/api/v1/groups", {"name": "cfg", "spec": body})
    assert_error(response, 400, "invalid_document")


@pytest.mark.parametrize("group", ["..", ".", "-x", ".hidden", "a/b", "x" * 64, "a\n"])
def test_token_group_that_a_group_name_would_refuse_is_refused_with_400(
    srv: Server, group: str
) -> None:
    assert_error(srv.api("POST", "/api/v1/groups", {"name": group}), 400, "invalid_document")
    assert_error(srv.api("POST", "/api/v1/tokens", {"group": group}), 400, "invalid_document")


def test_405_carries_allow(srv: Server) -> None:
    response = srv.api("PUT", "/api/v1/tokens")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


def test_401_carries_www_authenticate(srv: Server) -> None:
    response = requests.get(f"{srv.url}/api/v1/devices", verify=str(srv.ca), timeout=30)
    assert_error(response, 401, "missing_api_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = srv.api("GET", "/api/v1/devices", token="crla.000000000000.nope")
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x00\x01\xff garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: \x00\r\n\r\n",
]


def raw_tls(srv: Server, data: bytes) -> bytes:
    ctx = ssl.create_default_context(cafile=str(srv.ca))
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(data)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def raw_tcp(srv: Server, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(data)
        try:
            s.recv(4096)
        except OSError:
            pass


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_http_gets_400_and_one_log_line(srv: Server, data: bytes) -> None:
    before = len(srv.log())
    answer = raw_tls(srv, data)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer[:200]
    assert requests.get(f"{srv.url}/healthz", verify=str(srv.ca), timeout=30).ok
    added = srv.log()[before:]
    assert "Traceback" not in added, added
    assert len(added.splitlines()) <= 1, added


def test_garbage_bytes_instead_of_tls_log_at_most_one_line(srv: Server) -> None:
    before = len(srv.log())
    raw_tcp(srv, bytes(range(256)) * 4)
    raw_tcp(srv, b"\x16\x03\x01\x00\x05hello" + bytes(200))
    raw_tcp(srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert requests.get(f"{srv.url}/healthz", verify=str(srv.ca), timeout=30).ok
    added = srv.log()[before:]
    assert "Traceback" not in added, added
    assert len(added.splitlines()) <= 3, added


def test_hostile_cases_left_the_server_healthy(srv: Server, dev: Device) -> None:
    assert requests.get(f"{srv.url}/healthz", verify=str(srv.ca), timeout=30).ok
    response = requests.get(
        f"{srv.url}/api/v1/devices/{dev.device_id}/spec",
        cert=dev.cert,
        verify=str(srv.ca),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_status_event_models_refuse_what_json_decoding_would_let_through() -> None:
    """The MQTT path validates decoded documents too: the model itself bounds the numbers."""
    from registration.desired import StatusEvent
    from registration.document import ValidationError

    for bad in (
        {"seq": 1, "observed_generation": 2**64, "at": 1.0},
        {"seq": 2**63, "observed_generation": 0, "at": 1.0},
        {"seq": 1, "observed_generation": 0, "at": float("nan")},
        {"seq": 1, "observed_generation": 0, "at": float("inf")},
    ):
        with pytest.raises(ValidationError):
            StatusEvent.model_validate(bad)
    StatusEvent.model_validate({"seq": 2**63 - 1, "observed_generation": 2**63 - 1, "at": 1})


def test_hostile_status_over_mqtt_is_dropped_without_a_traceback(srv: Server, dev: Device) -> None:
    """The MQTT status path decodes with the same rules as HTTP: deep nesting, NaN and
    out-of-range numbers are dropped and counted, and the log gets one line each."""
    import subprocess
    import time
    from pathlib import Path

    from registration.desired import status_topic
    from tests.mqtt_support import mosquitto_pub

    def dropped() -> int:
        return int(srv.api("GET", "/api/v1/stats").json()["channel"]["dropped"])

    before = dropped()
    junk = ["[" * 5000 + "]" * 5000, status_body(at="NaN"), status_body(observed_generation=BIG)]
    for message in junk:
        argv = mosquitto_pub(
            srv.mqtt_port,
            srv.ca,
            Path(dev.cert[0]),
            Path(dev.cert[1]),
            status_topic(dev.device_id),
            message,
            client_id=dev.device_id,
        )
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    deadline = time.monotonic() + 20
    while dropped() < before + len(junk) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dropped() == before + len(junk)
    reported = srv.api("GET", f"/api/v1/devices/{dev.device_id}").json()["reported"]
    assert reported["acked_seq"] == 0, reported
