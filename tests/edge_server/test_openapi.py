"""The OpenAPI document describes the real API: live answers of a real server must match it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from registration import identity
from tests.node_image.seed_iso import make_iso
from tests.support import Machine, Server


class Contract:
    """Checks each answer against the document fetched from the server itself."""

    def __init__(self, server: Server) -> None:
        self.server = server
        answer = requests.get(
            f"{server.url}/api/v1/openapi.json", verify=str(server.ca), timeout=30
        )
        assert answer.status_code == 200
        self.doc: dict[str, Any] = answer.json()
        self.seen: set[tuple[str, str, str]] = set()

    def call(
        self,
        method: str,
        template: str,
        path: str | None = None,
        *,
        body: Any = None,
        operator: bool = True,
        cert: tuple[str, str] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        headers = dict(headers or {})
        if operator:
            headers["Authorization"] = f"Bearer {self.server.admin_token}"
        response = requests.request(
            method,
            self.server.url + (path or template),
            json=body,
            data=data,
            params=params,
            headers=headers,
            cert=cert,
            verify=str(self.server.ca),
            timeout=30,
        )
        self.check(method, template, response, params or {}, headers)
        return response

    def check(
        self,
        method: str,
        template: str,
        response: requests.Response,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        op = self.doc["paths"][template][method.lower()]
        declared = {(p["in"], p["name"].lower()) for p in op.get("parameters", [])}
        for name in params:
            assert ("query", name.lower()) in declared, (template, name)
        for name in headers:
            if name.lower() not in ("authorization", "content-type"):
                assert ("header", name.lower()) in declared, (template, name)
        status = str(response.status_code)
        key = status if status in op["responses"] else f"{status[0]}XX"
        assert key in op["responses"], (method, template, status, response.text[:300])
        spec = op["responses"][key]
        for header in spec.get("headers", {}):
            assert header in response.headers, (method, template, status, header)
        content = spec.get("content")
        if content is None:
            assert response.content == b"", (method, template, status)
        else:
            ctype = response.headers["Content-Type"].split(";")[0]
            assert ctype in content, (method, template, status, ctype)
            if ctype == "application/json":
                schema = {**content[ctype]["schema"], "components": self.doc["components"]}
                errors = sorted(Draft202012Validator(schema).iter_errors(response.json()), key=str)
                assert not errors, (method, template, status, [e.message for e in errors][:5])
        self.seen.add((method.lower(), template, key))


@pytest.fixture(scope="module")
def srv(shared_server: Server) -> Server:
    """One server for the module (its log must stay free of tracebacks: see conftest)."""
    return shared_server


def register(c: Contract, machine: Machine, token: str, expect: int) -> dict[str, Any]:
    answer = c.call("POST", "/api/v1/register", body=machine.request(token), operator=False)
    assert answer.status_code == expect, answer.text
    data: dict[str, Any] = answer.json()
    return data


def test_document_is_valid_openapi_and_states_what_the_server_enforces(srv: Server) -> None:
    doc = Contract(srv).doc
    validate_spec(doc)
    listing = doc["paths"]["/api/v1/devices"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"selector", "limit", "after"}
    spec = doc["paths"]["/api/v1/devices/{device_id}/spec"]["get"]
    assert "If-None-Match" in {p["name"] for p in spec["parameters"]}
    assert "304" in spec["responses"] and "ETag" in spec["responses"]["304"]["headers"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (method, path)
            for status in ok:
                assert "content" in op["responses"][status], (method, path, status)
    schemas = doc["components"]["schemas"]
    labels = schemas["LabelPatch"]["properties"]["labels"]
    assert labels["propertyNames"]["pattern"].endswith("$")
    assert schemas["ConfigFile"]["properties"]["path"]["pattern"]
    assert (
        schemas["TokenCreate"]["properties"]["group"]["pattern"]
        == (schemas["GroupCreate"]["properties"]["name"]["pattern"])
    )
    event = schemas["StatusEvent"]["properties"]
    assert event["observed_generation"]["maximum"] == 2**63 - 1


def test_no_schema_is_listed_twice(srv: Server) -> None:
    from edge_server.api.openapi import OPERATIONS

    doc = Contract(srv).doc
    keys = [(op.method, op.path) for op in OPERATIONS]
    assert len(keys) == len(set(keys))
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == len(keys)
    bodies = [json.dumps(s, sort_keys=True) for s in doc["components"]["schemas"].values()]
    assert len(bodies) == len(set(bodies))


def test_live_answers_match_the_document(srv: Server, tmp_path: Path) -> None:
    from edge_server.api.openapi import OPERATIONS

    c = Contract(srv)
    c.call("GET", "/healthz", operator=False)
    c.call("GET", "/api/v1/ca", operator=False)
    c.call("GET", "/api/v1/openapi.json", operator=False)

    created = c.call("POST", "/api/v1/tokens", body={"max_uses": 5, "labels": {"site": "eu"}})
    assert created.status_code == 201
    token = created.json()
    tid = token["id"]
    c.call("GET", "/api/v1/tokens")
    c.call("GET", "/api/v1/tokens/{token_id}", f"/api/v1/tokens/{tid}")

    a, b = Machine(), Machine()
    reg_a = register(c, a, token["token"], 201)
    register(c, a, token["token"], 200)  # the same machine again
    reg_b = register(c, b, token["token"], 201)
    a_id, b_id = reg_a["device_id"], reg_b["device_id"]
    a_cert = a.write_identity(tmp_path / "a", reg_a)

    page = c.call("GET", "/api/v1/devices", params={"selector": "site=eu", "limit": "1"}).json()
    assert page["total"] == 2 and page["next"]
    c.call("GET", "/api/v1/devices", params={"limit": "1", "after": page["next"]})
    dev = "/api/v1/devices/{device_id}"
    c.call("GET", dev, f"/api/v1/devices/{a_id}")
    c.call("PATCH", dev + "/labels", f"/api/v1/devices/{a_id}/labels", body={"labels": {"r": "x"}})
    override = {"config": [{"path": "/etc/corral/x", "content": "x"}], "os": {"version": "2"}}
    c.call("PUT", dev + "/override", f"/api/v1/devices/{a_id}/override", body=override)
    spec = c.call("GET", dev + "/spec", f"/api/v1/devices/{a_id}/spec", operator=False, cert=a_cert)
    c.call(
        "GET",
        dev + "/spec",
        f"/api/v1/devices/{a_id}/spec",
        operator=False,
        cert=a_cert,
        headers={"If-None-Match": spec.headers["ETag"]},
    )
    assert c.call("GET", dev + "/spec", f"/api/v1/devices/{a_id}/spec").status_code == 200
    c.call("GET", dev + "/whoami", f"/api/v1/devices/{a_id}/whoami", operator=False, cert=a_cert)
    events = {
        "events": [
            {
                "seq": 1,
                "observed_generation": spec.json()["generation"],
                "conditions": [{"type": "config", "status": "Applied"}],
                "at": 1.5,
            }
        ]
    }
    c.call(
        "POST", dev + "/status", f"/api/v1/devices/{a_id}/status", body=events, operator=False,
        cert=a_cert,
    )  # fmt: skip
    c.call("GET", dev, f"/api/v1/devices/{a_id}")
    c.call("GET", "/api/v1/stats")
    renewed = c.call(
        "POST", dev + "/certificate", f"/api/v1/devices/{a_id}/certificate",
        body={"csr": identity.make_csr(a.key).decode()}, operator=False, cert=a_cert,
    )  # fmt: skip
    assert renewed.status_code == 200, renewed.text

    group = {"name": "eu", "selector": "site=eu", "spec": {"k3s": {"version": "v1.30.0+k3s1"}}}
    assert c.call("POST", "/api/v1/groups", body=group).status_code == 201
    # Both devices are in the eu cluster; the lower id is its K3s server node.
    certs = {a_id: a_cert, b_id: b.write_identity(tmp_path / "b", reg_b)}
    k3s_server, k3s_agent = sorted(certs)
    report = {"server_url": "https://10.0.0.1:6443", "token": "K10x::server:y", "version": "v1"}
    for device_id, status in ((k3s_server, 200), (k3s_agent, 409)):
        reported = c.call(
            "POST", dev + "/k3s", f"/api/v1/devices/{device_id}/k3s", body=report,
            operator=False, cert=certs[device_id],
        )  # fmt: skip
        assert reported.status_code == status, reported.text
    c.call("GET", "/api/v1/groups")
    c.call("GET", "/api/v1/groups/{name}", "/api/v1/groups/eu")
    c.call("PATCH", "/api/v1/groups/{name}", "/api/v1/groups/eu", body={"priority": 5})
    c.call("DELETE", "/api/v1/groups/{name}", "/api/v1/groups/eu")

    api_token = c.call("POST", "/api/v1/api-tokens", body={"description": "ci"}).json()
    c.call("GET", "/api/v1/api-tokens")
    c.call("DELETE", "/api/v1/api-tokens/{token_id}", f"/api/v1/api-tokens/{api_token['id']}")

    blob = b"an os image" * 1000
    art = "/api/v1/artifacts/{artifact_id}"
    query = {"kind": "os-image", "name": "os", "version": "1.0"}
    imported = c.call("POST", "/api/v1/artifacts", params=query, data=blob)
    assert imported.status_code == 201, imported.text
    art_id = imported.json()["id"]
    assert c.call("POST", "/api/v1/artifacts", params=query, data=blob).status_code == 409
    c.call("GET", "/api/v1/artifacts", params={"kind": "os-image"})
    c.call("GET", art, f"/api/v1/artifacts/{art_id}")
    content = f"/api/v1/artifacts/{art_id}/content"
    assert c.call("GET", art + "/content", content, operator=False, cert=a_cert).content == blob
    part = c.call("GET", art + "/content", content, headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == blob[100:]
    past = c.call("GET", art + "/content", content, headers={"Range": f"bytes={len(blob)}-"})
    assert past.status_code == 416
    c.call("DELETE", art, f"/api/v1/artifacts/{art_id}")

    seed = "/api/v1/tokens/{token_id}/seed.iso"
    seed_path = f"/api/v1/tokens/{tid}/seed.iso"
    assert c.call("GET", seed, seed_path).json()["error"] == "no_base_image"  # 409
    iso = make_iso(tmp_path).read_bytes()
    query = {"kind": "base-iso", "name": "base.iso", "version": "1"}
    assert c.call("POST", "/api/v1/artifacts", params=query, data=iso).status_code == 201
    whole = c.call("GET", seed, seed_path, params={"label": "rack=r1", "install_disk": "/dev/sda"})
    assert whole.status_code == 200 and len(whole.content) == len(iso)
    part = c.call("GET", seed, seed_path, headers={"Range": "bytes=-100"})
    assert part.status_code == 206 and part.content == iso[-100:]
    assert c.call("GET", seed, seed_path, params={"ip": "nope"}).status_code == 400

    c.call("POST", dev + "/reset", f"/api/v1/devices/{b_id}/reset")
    c.call("DELETE", dev, f"/api/v1/devices/{b_id}")
    c.call("DELETE", "/api/v1/tokens/{token_id}", f"/api/v1/tokens/{tid}")
    assert c.call("GET", seed, seed_path).json()["error"] == "token_revoked"  # 410

    # Errors, each documented for its operation, each with the error body.
    assert c.call("GET", "/api/v1/devices", operator=False).status_code == 401
    assert c.call("GET", "/api/v1/devices", params={"selector": "a b"}).status_code == 400
    assert c.call("GET", "/api/v1/devices", params={"limit": "0"}).status_code == 400
    assert c.call("GET", dev, "/api/v1/devices/dev-nope").status_code == 404
    other = f"/api/v1/devices/{b_id}/whoami"
    assert c.call("GET", dev + "/whoami", other, operator=False, cert=a_cert).status_code == 403
    assert c.call("POST", "/api/v1/groups", body={"name": "x"}).status_code == 201
    assert c.call("POST", "/api/v1/groups", body={"name": "x"}).status_code == 409
    assert c.call("POST", "/api/v1/groups", body={"name": ".."}).status_code == 400
    assert c.call("POST", "/api/v1/tokens", data=b"{}", headers={}).status_code == 415
    huge = {"description": "x" * (70 * 1024)}
    assert c.call("POST", "/api/v1/tokens", body=huge).status_code == 413
    assert c.call("POST", "/api/v1/register", body={}, operator=False).status_code == 400
    fresh = c.call("POST", "/api/v1/tokens", body={}).json()["token"]
    forged = fresh.rsplit(".", 1)[0] + "." + "A" * 43
    register(c, Machine(), forged, 401)
    register(c, Machine(dmi_uuid=a.dmi_uuid), fresh, 409)  # a new key for a known machine

    missing = {
        (op.method, op.path, str(status))
        for op in OPERATIONS
        for status in op.ok
        if (op.method, op.path, str(status)) not in c.seen
    }
    # A full disk cannot be made here; test_storage_full checks that 503 against the document.
    missing -= {("get", "/healthz", "503")}
    assert not missing, sorted(missing)
