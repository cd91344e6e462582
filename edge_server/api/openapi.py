"""The OpenAPI 3.1 document at ``/api/v1/openapi.json``.

Every schema, request and answer alike, is generated from a pydantic model (``registration``'s
wire documents; the ``ops`` rows and ``api/responses.py``'s own few, all named there), so the
patterns and bounds the server enforces are the ones the document states.
``tests/edge_server/test_openapi.py`` checks live answers of a real server against it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from edge_server.api import responses as r
from edge_server.api.api_tokens import ApiTokenCreate
from edge_server.api.groups import GroupCreate, GroupUpdate
from edge_server.api.http import json_response
from edge_server.api.middleware import CHALLENGE
from edge_server.ops.artifacts import ARCH_PATTERN
from edge_server.ops.rows import DOCUMENT_REF, STORED
from edge_server.selectors import MAX_TERMS
from registration.artifacts import ARTIFACT_NAME_PATTERN, SHA256_PATTERN, ArtifactKind
from registration.desired import SpecDocument, SpecPatch, StatusAck, StatusBatch
from registration.docschema import json_schemas
from registration.document import Document
from registration.protocol import (
    GROUP_NAME_PATTERN,
    CertificateRenewRequest,
    CertificateRenewResponse,
    K3sServerAck,
    K3sServerReport,
    LabelPatch,
    RegisterRequest,
    RegisterResponse,
    TokenCreate,
)

routes = web.RouteTableDef()

Security = list[dict[str, list[str]]]
OPERATOR: Security = [{"apiToken": []}]
DEVICE: Security = [{"deviceCertificate": []}]
PUBLIC: Security = []

PEM = "application/x-pem-file"
ETAG = {"ETag": {"description": "generation and acknowledged seq", "schema": {"type": "string"}}}

DEVICE_QUERY: tuple[dict[str, Any], ...] = (
    {
        "name": "selector",
        "in": "query",
        "description": "label selector, e.g. site=eu,role!=test,gpu,!lab "
        f"(=, ==, !=, key, !key; at most {MAX_TERMS} terms, all must hold)",
        "schema": {"type": "string"},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    {
        "name": "after",
        "in": "query",
        "description": "the previous page's `next`: list devices with a greater id",
        "schema": {"type": "string"},
    },
)
IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "description": "the ETag of the spec the caller holds: 304 while it is current",
    "schema": {"type": "string"},
}


ARTIFACT_QUERY: tuple[dict[str, Any], ...] = tuple(
    {"name": name, "in": "query", "required": required, "description": text, "schema": schema}
    for name, required, text, schema in (
        (
            "kind",
            True,
            "what the file is",
            {"type": "string", "enum": list(get_args(ArtifactKind))},
        ),
        ("name", True, "e.g. os, k3s", {"type": "string", "pattern": ARTIFACT_NAME_PATTERN}),
        (
            "version",
            True,
            "e.g. v1.31.4+k3s1",
            {"type": "string", "pattern": ARTIFACT_NAME_PATTERN},
        ),
        (
            "arch",
            False,
            "amd64, arm64, …; omit for every arch",
            {"type": "string", "pattern": ARCH_PATTERN},
        ),
        (
            "sha256",
            False,
            "the upload must hash to this",
            {"type": "string", "pattern": SHA256_PATTERN},
        ),
    )
)
ARTIFACT_KIND_QUERY: dict[str, Any] = {
    "name": "kind",
    "in": "query",
    "description": "only artifacts of this kind",
    "schema": {"type": "string", "enum": list(get_args(ArtifactKind))},
}
RANGE_HEADERS: tuple[dict[str, Any], ...] = (
    {
        "name": "Range",
        "in": "header",
        "description": "one byte range, e.g. bytes=1048576- to resume (206 Partial Content)",
        "schema": {"type": "string"},
    },
    {
        "name": "If-Range",
        "in": "header",
        "description": "the ETag (the quoted sha256) of the partial copy: the Range applies only "
        "while it matches",
        "schema": {"type": "string"},
    },
)
OCTETS = "application/octet-stream"
STR: dict[str, Any] = {"type": "string"}
SEED_QUERY: tuple[dict[str, Any], ...] = tuple(
    {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
    for name, text, schema in (
        ("server", "the URL devices register with (default: this server's public URL)", STR),
        ("label", "KEY=VALUE, a label the device registers with (repeatable)", STR),
        ("hostname_template", "e.g. edge-${dmi.product_uuid:8}", STR),
        ("install_disk", "install to this disk at first boot, e.g. /dev/sda", STR),
        ("ip", "a static address ADDR/PREFIX (default: DHCP)", STR),
        ("gateway", "the static default gateway (with ip)", STR),
        ("dns", "a DNS server (with ip; repeatable, at most 3)", STR),
        ("interface", "which interface (with ip; a name or glob)", STR),
    )
)


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post", "put", "patch", "delete"]
    path: str
    summary: str
    security: Security
    answer: type[BaseModel | Document] | None
    ok: tuple[int, ...] = (200,)
    body: type[BaseModel | Document] | None = None
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: The body is the raw bytes of a file (``application/octet-stream``), not JSON.
    upload: bool = False


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/healthz",
        "Liveness; 503 degraded while the disk is full",
        PUBLIC,
        r.Health,
        ok=(200, 503),
    ),
    Operation(
        "get",
        "/api/v1/ca",
        "The Corral CA certificate (PEM); pin it by the token's sha256",
        PUBLIC,
        None,
        extra={"content": {PEM: {"schema": {"type": "string"}}}},
    ),
    Operation(
        "get",
        "/api/v1/openapi.json",
        "This document",
        PUBLIC,
        None,
        extra={"content": {"application/json": {"schema": {"type": "object"}}}},
    ),
    Operation(
        "post",
        "/api/v1/register",
        "Register a device with a token and a CSR (201 new device, 200 known machine again)",
        PUBLIC,
        RegisterResponse,
        ok=(201, 200),
        body=RegisterRequest,
        errors=(401, 409, 429),
    ),
    Operation(
        "post",
        "/api/v1/tokens",
        "Create a registration token (shown once)",
        OPERATOR,
        r.TokenCreated,
        ok=(201,),
        body=TokenCreate,
    ),
    Operation(
        "get",
        "/api/v1/tokens",
        "List registration tokens (never their secrets)",
        OPERATOR,
        r.TokenList,
    ),
    Operation(
        "get", "/api/v1/tokens/{token_id}", "Show a registration token", OPERATOR, r.TokenRow
    ),
    Operation(
        "delete", "/api/v1/tokens/{token_id}", "Revoke a registration token", OPERATOR, r.TokenRow
    ),
    Operation(
        "get",
        "/api/v1/tokens/{token_id}/seed.iso",
        "Download the newest base ISO with this token's seed in its seed slot (streamed, never"
        " stored); Range resumes (206). 409 no_base_image before 'corral image import-base',"
        " 409 token_not_sealed for a token older than sealed secrets, 410 for a revoked,"
        " expired or used-up token",
        OPERATOR,
        None,
        ok=(200, 206),
        errors=(400, 409, 410, 416),
        parameters=SEED_QUERY + RANGE_HEADERS,
        extra={
            "content": {OCTETS: {"schema": {"type": "string", "contentMediaType": OCTETS}}},
            "headers": {
                "ETag": {"description": "changes with the base ISO and the seed", "schema": STR},
                "Accept-Ranges": {"description": "bytes", "schema": STR},
                "Content-Disposition": {
                    "description": 'attachment; filename="corral-seed-<token id>.iso"',
                    "schema": STR,
                },
            },
        },
    ),
    Operation(
        "get",
        "/api/v1/devices",
        "List devices matching a label selector, a page at a time",
        OPERATOR,
        r.DevicePage,
        errors=(400,),
        parameters=DEVICE_QUERY,
    ),
    Operation("get", "/api/v1/devices/{device_id}", "Show a device", OPERATOR, r.DeviceDetail),
    Operation(
        "patch",
        "/api/v1/devices/{device_id}/labels",
        "Set (value) or remove (null) operator labels",
        OPERATOR,
        r.DeviceRow,
        body=LabelPatch,
    ),
    Operation(
        "delete",
        "/api/v1/devices/{device_id}",
        "Delete a device and revoke its certificates",
        OPERATOR,
        r.DeviceAction,
    ),
    Operation(
        "post",
        "/api/v1/devices/{device_id}/reset",
        "Forget the device's key so the machine can register again with a new one",
        OPERATOR,
        r.DeviceAction,
    ),
    Operation(
        "get",
        "/api/v1/devices/{device_id}/whoami",
        "The calling device's identity (mTLS)",
        DEVICE,
        r.Whoami,
    ),
    Operation(
        "get",
        "/api/v1/devices/{device_id}/spec",
        "The device's computed spec (device mTLS, its own id only, or operator). The ETag covers"
        " the generation and the acknowledged seq: 304 while neither changed",
        DEVICE + OPERATOR,
        SpecDocument,
        ok=(200, 304),
        parameters=(IF_NONE_MATCH,),
    ),
    Operation(
        "put",
        "/api/v1/devices/{device_id}/override",
        "Set the device's spec override",
        OPERATOR,
        r.OverrideSet,
        body=SpecPatch,
    ),
    Operation(
        "post",
        "/api/v1/devices/{device_id}/status",
        "Status events from the device's outbox, applied once per seq (mTLS)",
        DEVICE,
        StatusAck,
        body=StatusBatch,
    ),
    Operation(
        "post",
        "/api/v1/devices/{device_id}/certificate",
        "Renew the device's certificate from a CSR (mTLS); the old one stays valid until expiry",
        DEVICE,
        CertificateRenewResponse,
        body=CertificateRenewRequest,
    ),
    Operation(
        "post",
        "/api/v1/devices/{device_id}/k3s",
        "The cluster's K3s server node reports its join URL, token and version (mTLS); its"
        " group's other devices then get them in their specs",
        DEVICE,
        K3sServerAck,
        body=K3sServerReport,
        errors=(409,),
    ),
    Operation("get", "/api/v1/stats", "Channel counters", OPERATOR, r.Stats),
    Operation(
        "post",
        "/api/v1/groups",
        "Create a group (selector, priority, spec)",
        OPERATOR,
        r.GroupChanged,
        ok=(201,),
        body=GroupCreate,
        errors=(409,),
    ),
    Operation(
        "get", "/api/v1/groups", "List groups, lowest precedence first", OPERATOR, r.GroupList
    ),
    Operation("get", "/api/v1/groups/{name}", "Show a group", OPERATOR, r.GroupRow),
    Operation(
        "patch",
        "/api/v1/groups/{name}",
        "Change a group's selector, priority or spec",
        OPERATOR,
        r.GroupChanged,
        body=GroupUpdate,
    ),
    Operation("delete", "/api/v1/groups/{name}", "Delete a group", OPERATOR, r.GroupDeleted),
    Operation(
        "post",
        "/api/v1/api-tokens",
        "Create an operator API token (admin)",
        OPERATOR,
        r.ApiTokenCreated,
        ok=(201,),
        body=ApiTokenCreate,
        errors=(404,),
    ),
    Operation(
        "get", "/api/v1/api-tokens", "List operator API tokens (admin)", OPERATOR, r.ApiTokenList
    ),
    Operation(
        "delete",
        "/api/v1/api-tokens/{token_id}",
        "Revoke an operator API token (admin)",
        OPERATOR,
        r.ApiTokenRevoked,
    ),
    Operation(
        "post",
        "/api/v1/artifacts",
        "Import a file into the artifact mirror (streamed; signed with the update-signing key)."
        " Nothing is stored unless every byte of Content-Length arrived and the sha256 matches",
        OPERATOR,
        r.ArtifactImported,
        ok=(201,),
        errors=(400, 409, 507),
        parameters=ARTIFACT_QUERY,
        upload=True,
    ),
    Operation(
        "get",
        "/api/v1/artifacts",
        "List the mirror's artifacts, oldest import first",
        OPERATOR,
        r.ArtifactList,
        parameters=(ARTIFACT_KIND_QUERY,),
    ),
    Operation(
        "get", "/api/v1/artifacts/{artifact_id}", "Show an artifact", OPERATOR, r.ArtifactRow
    ),
    Operation(
        "delete",
        "/api/v1/artifacts/{artifact_id}",
        "Delete an artifact (its file goes with its last reference)",
        OPERATOR,
        r.ArtifactDeleted,
    ),
    Operation(
        "get",
        "/api/v1/artifacts/{artifact_id}/content",
        "Download an artifact (device mTLS, any registered device, or operator); Range resumes"
        " a cut download (206)",
        DEVICE + OPERATOR,
        None,
        ok=(200, 206),
        errors=(416,),
        parameters=RANGE_HEADERS,
        extra={
            "content": {OCTETS: {"schema": {"type": "string", "contentMediaType": OCTETS}}},
            "headers": {
                "ETag": {"description": "the quoted sha256", "schema": {"type": "string"}},
                "Accept-Ranges": {"description": "bytes", "schema": {"type": "string"}},
            },
        },
    ),
)

ERROR_TEXT = {
    400: "Malformed input",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    410: "Gone",
    413: "Body too large",
    415: "Wrong content type",
    416: "Range not satisfiable (Content-Range: bytes */size)",
    429: "Too many failures",
    507: "The disk under the database is full; nothing was written (storage_full)",
}
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": GROUP_NAME_PATTERN},
}


def error_statuses(op: Operation) -> list[int]:
    """What each operation can answer besides success: from its security, its body, its path
    parameters, plus its own. Any 5xx has the same error body."""
    statuses = set(op.errors)
    if op.security:
        statuses |= {401, 403}
    if op.body is not None:
        statuses |= {400, 413, 415}
    if op.upload:
        statuses.add(400)
    if "{" in op.path:
        statuses.add(404)
    if op.method != "get":
        statuses.add(507)  # the disk under the database is full: nothing was written
    return sorted(statuses)


def _error(status: int | str, text: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"description": CHALLENGE, "schema": {"type": "string"}}
        }
    return response


@dataclass(frozen=True)
class Schemas:
    components: dict[str, Any]
    bodies: dict[type[Any], dict[str, Any]]  # model -> {"$ref": ...}, validation mode
    answers: dict[type[Any], dict[str, Any]]  # model -> {"$ref": ...}, serialization mode


def _schemas() -> Schemas:
    """One generated schema per model and mode, each once: request bodies as the server
    validates them, answers as it serializes them. The wire documents (``registration``)
    state their own schemas; the server's answer models are pydantic's."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    documents: dict[type[Document], None] = dict.fromkeys(STORED)
    for op in OPERATIONS:
        modes: tuple[tuple[Any, JsonSchemaMode], ...] = (
            (op.body, "validation"),
            (op.answer, "serialization"),
        )
        for model, mode in modes:
            if model is not None and issubclass(model, Document):
                documents[model] = None
            elif model is not None:
                wanted[(model, mode)] = None
    refs, top = models_json_schema(list(wanted), ref_template=DOCUMENT_REF)
    document_refs, document_schemas = json_schemas(list(documents), DOCUMENT_REF)
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "a stable code, e.g. bad_selector"},
            "detail": {"type": "string", "description": "what was wrong, for a human"},
        },
        "additionalProperties": False,
    }
    return Schemas(
        components={"Error": error, **top.get("$defs", {}), **document_schemas},
        bodies={
            **document_refs,
            **{m: ref for (m, mode), ref in refs.items() if mode == "validation"},
        },
        answers={
            **document_refs,
            **{m: ref for (m, mode), ref in refs.items() if mode == "serialization"},
        },
    )


def _operation_id(op: Operation) -> str:
    """``get /api/v1/devices/{device_id}/spec`` → ``get_devices_device_id_spec``."""
    words = re.sub(r"[^A-Za-z0-9]+", "_", op.path.removeprefix("/api/v1")).strip("_")
    return f"{op.method}_{words}"


def _operation(op: Operation, schemas: Schemas) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in op.ok:
        if status == 304:
            responses["304"] = {"description": "Not modified", "headers": ETAG}
            continue
        ok: dict[str, Any] = {"description": "Success", **op.extra}
        if op.answer is not None:
            ok["content"] = {"application/json": {"schema": schemas.answers[op.answer]}}
        if 304 in op.ok:
            ok["headers"] = ETAG
        responses[str(status)] = ok
    for status in error_statuses(op):
        responses[str(status)] = _error(status, ERROR_TEXT[status])
    responses["5XX"] = _error("5XX", "Server error (507 storage_full when the disk is full)")
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(op),
        "security": op.security,
        "responses": responses,
    }
    parameters = [
        {
            "name": p,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS.get(p, {"type": "string"}),
        }
        for p in (part.strip("{}") for part in op.path.split("/") if part.startswith("{"))
    ]
    parameters += list(op.parameters)
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.bodies[op.body]}},
        }
    if op.upload:
        out["requestBody"] = {
            "required": True,
            "content": {OCTETS: {"schema": {"type": "string", "contentMediaType": OCTETS}}},
        }
    return out


@functools.cache
def document() -> dict[str, Any]:
    schemas = _schemas()
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Corral API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer"},
                "deviceCertificate": {"type": "mutualTLS"},
            },
        },
    }


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(document())
