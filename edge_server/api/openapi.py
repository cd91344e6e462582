"""The OpenAPI 3.1 document at ``/api/v1/openapi.json``, with schemas from the protocol models."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edge_server.api.api_tokens import ApiTokenCreate
from edge_server.api.groups import GroupCreate, GroupUpdate
from edge_server.api.http import json_response
from registration.desired import SpecPatch, StatusBatch
from registration.protocol import (
    CertificateRenewRequest,
    CertificateRenewResponse,
    LabelPatch,
    RegisterRequest,
    RegisterResponse,
    TokenCreate,
)

routes = web.RouteTableDef()

OPERATOR: list[dict[str, list[str]]] = [{"apiToken": []}]
DEVICE: list[dict[str, list[str]]] = [{"deviceCertificate": []}]
PUBLIC: list[dict[str, list[str]]] = []

# (method, path, summary, security, request schema, success status)
OPERATIONS: list[tuple[str, str, str, list[Any], str | None, str]] = [
    ("get", "/healthz", "Liveness", PUBLIC, None, "200"),
    (
        "get",
        "/api/v1/ca",
        "The Corral CA certificate (PEM); pin it by the token's sha256",
        PUBLIC,
        None,
        "200",
    ),
    ("get", "/api/v1/openapi.json", "This document", PUBLIC, None, "200"),
    (
        "post",
        "/api/v1/register",
        "Register a device with a token and a CSR",
        PUBLIC,
        "RegisterRequest",
        "201",
    ),
    (
        "post",
        "/api/v1/tokens",
        "Create a registration token (shown once)",
        OPERATOR,
        "TokenCreate",
        "201",
    ),
    (
        "get",
        "/api/v1/tokens",
        "List registration tokens (never their secrets)",
        OPERATOR,
        None,
        "200",
    ),
    ("get", "/api/v1/tokens/{token_id}", "Show a registration token", OPERATOR, None, "200"),
    ("delete", "/api/v1/tokens/{token_id}", "Revoke a registration token", OPERATOR, None, "200"),
    (
        "get",
        "/api/v1/devices",
        "List devices; ?selector=site=eu,role!=test&limit=&after=",
        OPERATOR,
        None,
        "200",
    ),
    ("get", "/api/v1/devices/{device_id}", "Show a device", OPERATOR, None, "200"),
    (
        "patch",
        "/api/v1/devices/{device_id}/labels",
        "Set (value) or remove (null) labels",
        OPERATOR,
        "LabelPatch",
        "200",
    ),
    (
        "delete",
        "/api/v1/devices/{device_id}",
        "Delete a device and revoke its certificates",
        OPERATOR,
        None,
        "200",
    ),
    (
        "post",
        "/api/v1/devices/{device_id}/reset",
        "Forget the device's key so the machine can register again with a new one",
        OPERATOR,
        None,
        "200",
    ),
    (
        "get",
        "/api/v1/devices/{device_id}/whoami",
        "The calling device's identity (mTLS)",
        DEVICE,
        None,
        "200",
    ),
    (
        "get",
        "/api/v1/devices/{device_id}/spec",
        "The device's computed spec (device mTLS or operator); ETag covers generation and acked"
        " seq, 304 if unchanged",
        DEVICE + OPERATOR,
        None,
        "200",
    ),
    (
        "put",
        "/api/v1/devices/{device_id}/override",
        "Set the device's spec override",
        OPERATOR,
        "SpecPatch",
        "200",
    ),
    (
        "post",
        "/api/v1/devices/{device_id}/status",
        "Status events from the device's outbox, applied once per seq (mTLS)",
        DEVICE,
        "StatusBatch",
        "200",
    ),
    (
        "post",
        "/api/v1/devices/{device_id}/certificate",
        "Renew the device's certificate from a CSR (mTLS); the old one stays valid until expiry",
        DEVICE,
        "CertificateRenewRequest",
        "200",
    ),
    ("get", "/api/v1/stats", "Channel counters", OPERATOR, None, "200"),
    (
        "post",
        "/api/v1/groups",
        "Create a group (selector, priority, spec)",
        OPERATOR,
        "GroupCreate",
        "201",
    ),
    ("get", "/api/v1/groups", "List groups, lowest precedence first", OPERATOR, None, "200"),
    ("get", "/api/v1/groups/{name}", "Show a group", OPERATOR, None, "200"),
    (
        "patch",
        "/api/v1/groups/{name}",
        "Change a group's selector, priority or spec",
        OPERATOR,
        "GroupUpdate",
        "200",
    ),
    ("delete", "/api/v1/groups/{name}", "Delete a group", OPERATOR, None, "200"),
    (
        "post",
        "/api/v1/api-tokens",
        "Create an operator API token",
        OPERATOR,
        "ApiTokenCreate",
        "201",
    ),
    ("get", "/api/v1/api-tokens", "List operator API tokens", OPERATOR, None, "200"),
    (
        "delete",
        "/api/v1/api-tokens/{token_id}",
        "Revoke an operator API token",
        OPERATOR,
        None,
        "200",
    ),
]

ERROR_STATUSES = {
    "400": "Malformed input",
    "401": "Not authenticated",
    "403": "Not allowed",
    "404": "Not found",
    "409": "Conflict",
    "413": "Body too large",
    "415": "Wrong content type",
    "429": "Too many failures",
}


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        }
    }
    for model in (
        RegisterRequest,
        RegisterResponse,
        TokenCreate,
        LabelPatch,
        ApiTokenCreate,
        SpecPatch,
        StatusBatch,
        GroupCreate,
        GroupUpdate,
        SpecPatch,
        StatusBatch,
        GroupCreate,
        GroupUpdate,
        CertificateRenewRequest,
        CertificateRenewResponse,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, security, body, ok in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "security": security,
            "responses": {
                ok: {"description": "Success"},
                **{
                    status: {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                    for status, text in ERROR_STATUSES.items()
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if body:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                },
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Corral API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer"},
                "deviceCertificate": {"type": "mutualTLS"},
            },
        },
    }


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(document())
