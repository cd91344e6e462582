"""Request and response helpers shared by the API modules."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from edge_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from edge_server.keys import SETTINGS
from registration import protocol
from registration.document import Document

M = TypeVar("M", bound=Document)


async def read_json(request: web.Request, max_bytes: int | None = None) -> Any:
    """The request's JSON body: 415 unless JSON, 413 past the limit, 400 (``invalid_json``) if
    it does not parse, nests too deep or holds NaN, Infinity or a number that overflows."""
    limit = max_bytes or request.app[SETTINGS].max_body_bytes
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"send Content-Type: application/json, not {request.content_type!r}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(16384):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
    return protocol.loads(body)


SPEC_BODY_BYTES = 4 * 1024 * 1024


async def read_model(request: web.Request, model: type[M], max_bytes: int | None = None) -> M:
    return protocol.parse(model, await read_json(request, max_bytes))


def json_response(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel | Document):
        text = data.model_dump_json()
    else:
        text = json.dumps(data, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise BadRequest(f"query parameter {name} must be an integer") from e
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name} must be between {lo} and {hi}")
    return value
