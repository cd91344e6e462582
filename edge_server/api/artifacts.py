"""The artifact mirror (``ops.artifacts``): streamed imports by operators, and downloads
with HTTP Range by devices (mTLS, any registered device whose certificate is not revoked)
and operators.

Neither direction holds a file in memory: an upload goes to disk a chunk at a time (hashed
as it goes, ``edge_server.mirror``), a download is read from disk a chunk at a time in a
thread and written with back-pressure. ``Served`` counts the bytes actually written, so a
resumed download shows what it really cost (``GET /api/v1/stats``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edge_server import mirror
from edge_server.api.http import json_response
from edge_server.auth import (
    authenticate_device,
    authenticate_operator,
    current_actor,
    operator,
    peer_certificate,
)
from edge_server.errors import BadRequest, NotFound
from edge_server.keys import ARTIFACTS_SERVED, NOTIFIER, SETTINGS, STORE, UPDATE_SIGNER
from edge_server.ops import artifacts as artifact_ops
from edge_server.ops.artifacts import ArtifactImport
from registration import protocol

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

#: Uploads are written to disk this much at a time.
CHUNK = 1 << 20
#: Downloads are read and sent this much at a time: with the transport's buffer, what one
#: download holds in memory, whatever the file's size.
SEND_CHUNK = 256 << 10
IMPORT_FIELDS = ("kind", "name", "version", "arch", "sha256")


def _import_meta(request: web.Request) -> ArtifactImport:
    unknown = set(request.query) - set(IMPORT_FIELDS)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    data = {k: request.query[k] for k in IMPORT_FIELDS if request.query.get(k)}
    if "sha256" in data:
        data["sha256"] = data["sha256"].lower()
    return protocol.parse(ArtifactImport, data)


async def _receive(request: web.Request, upload: mirror.Upload) -> None:
    """The body, a chunk at a time, into ``upload``; a cut connection is a truncated upload."""
    buffer = bytearray()
    try:
        async for data in request.content.iter_any():
            buffer += data
            if len(buffer) >= CHUNK:
                await asyncio.to_thread(upload.write, bytes(buffer))
                buffer.clear()
    except (ConnectionError, HttpProcessingError, asyncio.IncompleteReadError) as e:
        raise BadRequest(
            f"truncated upload: the connection ended after {upload.size + len(buffer)} of "
            f"{upload.expected_size} bytes ({e!r}); nothing was stored",
            code="truncated_upload",
        ) from e
    if buffer:
        await asyncio.to_thread(upload.write, bytes(buffer))


@routes.post("/api/v1/artifacts")
@operator("operator")
async def import_artifact(request: web.Request) -> web.Response:
    """Stream the body to disk; sign and record it only when every byte arrived and, when
    the caller gave one, the sha256 matches."""
    app = request.app
    meta = _import_meta(request)
    if request.content_length is None:
        raise BadRequest(
            "send the file with a Content-Length (the server checks that all of it arrived)",
            code="length_required",
        )
    store = app[STORE]
    await artifact_ops.check_new(store, meta)
    directory = app[SETTINGS].artifacts_dir
    upload = mirror.Upload(directory, request.content_length)
    await asyncio.to_thread(upload.open)
    try:
        await _receive(request, upload)
        received = await asyncio.to_thread(upload.finish, meta.sha256)
    except BaseException as e:
        await asyncio.to_thread(upload.discard)
        if isinstance(e, BadRequest):
            log.warning("refused the import of %s %s %s: %s", meta.kind, meta.name, meta.version, e)
        raise
    row = await app[NOTIFIER].run(
        artifact_ops.import_(
            store, current_actor(request), app[UPDATE_SIGNER], directory, meta, received
        )
    )
    log.info("imported %s %s %s (%s bytes)", row.kind, row.name, row.version, row.size)
    return json_response(row, status=201)


@routes.get("/api/v1/artifacts")
@operator("viewer")
async def list_artifacts(request: web.Request) -> web.Response:
    kind = request.query.get("kind") or None
    return json_response(await artifact_ops.list_all(request.app[STORE], kind))


@routes.get("/api/v1/artifacts/{artifact_id}")
@operator("viewer")
async def show_artifact(request: web.Request) -> web.Response:
    artifact_id = request.match_info["artifact_id"]
    return json_response(await artifact_ops.show(request.app[STORE], artifact_id))


@routes.delete("/api/v1/artifacts/{artifact_id}")
@operator("operator")
async def delete_artifact(request: web.Request) -> web.Response:
    app = request.app
    artifact_id = request.match_info["artifact_id"]
    done = await app[NOTIFIER].run(
        artifact_ops.delete(
            app[STORE], current_actor(request), app[SETTINGS].artifacts_dir, artifact_id
        )
    )
    return json_response(done)


def byte_range(request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
    """``(start, stop)`` asked for by ``Range`` (one range; ``If-Range`` honoured), or None
    for the whole file. Raises 416 for a range outside the file."""
    if "Range" not in request.headers:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        return None  # the file changed since the client's copy: send it whole
    try:
        wanted = request.http_range
    except ValueError:
        return None  # RFC 9110 §14.2: an invalid Range is ignored
    start = wanted.start if wanted.start is not None else 0
    if start < 0:
        start = max(size + start, 0)
    stop = size if wanted.stop is None else min(wanted.stop, size)
    if start >= size or start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, stop


def _open_at(path: Path, offset: int) -> IO[bytes]:
    f = open(path, "rb")  # closed by the caller
    f.seek(offset)
    return f


@routes.get("/api/v1/artifacts/{artifact_id}/content")
async def artifact_content(request: web.Request) -> web.StreamResponse:
    """The file, whole (200) or from a Range (206), a chunk at a time."""
    if peer_certificate(request) is not None:
        await authenticate_device(request, own_path=False)
    else:
        await authenticate_operator(request)
    app = request.app
    row = await artifact_ops.show(app[STORE], request.match_info["artifact_id"])
    path = mirror.path_of(app[SETTINGS].artifacts_dir, row.sha256)
    etag = f'"{row.sha256}"'
    served = app[ARTIFACTS_SERVED]
    span = byte_range(request, row.size, etag)
    start, stop = span if span is not None else (0, row.size)
    try:
        f = await asyncio.to_thread(_open_at, path, start)
    except FileNotFoundError as e:
        raise NotFound(f"artifact {row.id} has no file in the mirror") from e
    response = web.StreamResponse(status=206 if span is not None else 200)
    response.content_type = "application/octet-stream"
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = etag
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{row.size}"
    served.requests += 1
    served.range_requests += span is not None
    try:
        await response.prepare(request)
        left = stop - start
        while left > 0:
            chunk = await asyncio.to_thread(f.read, min(SEND_CHUNK, left))
            if not chunk:
                raise NotFound(f"artifact {row.id}: the file is shorter than recorded")
            await response.write(chunk)
            served.bytes_served += len(chunk)
            left -= len(chunk)
        await response.write_eof()
        served.completed += 1
    except ConnectionError:
        log.info("download of %s cut by the client after %s bytes", row.id, stop - start - left)
    finally:
        await asyncio.to_thread(f.close)
    return response
