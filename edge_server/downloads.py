"""Downloads both the API and the dashboard serve: HTTP Range on files, and the seed ISO
of a token (the newest base ISO with the token's seed in its slot, ``ops.seed_images``).

No seed ISO is stored: the base ISO is read a chunk at a time in a thread and the slot's
bytes are substituted on the way out (``node_image.image.seedslot.stream``), so the answer is
byte for byte what ``corral image seed`` writes for the same seed. Range resumes a cut
download; the ETag changes with the base ISO and the seed. The callers check who may ask
(an operator API token under ``/api``, a signed-in session in the dashboard).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from edge_server.errors import BadRequest, NotFound
from edge_server.keys import CA, SETTINGS, STORE, TOKEN_SEALER
from edge_server.ops import seed_images as seed_ops
from node_image.image import seedslot

log = logging.getLogger(__name__)

SEND_CHUNK = 256 << 10


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


def ranged_response(
    span: tuple[int, int] | None, size: int, etag: str
) -> tuple[web.StreamResponse, int, int]:
    """The response for ``span`` (from :func:`byte_range`) of a file of ``size`` bytes, not
    yet prepared: 200 whole or 206 with Content-Range; and the ``(start, stop)`` to send."""
    start, stop = span if span is not None else (0, size)
    response = web.StreamResponse(status=206 if span is not None else 200)
    response.content_type = "application/octet-stream"
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = etag
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return response, start, stop


#: Query parameters: what goes into the seed besides the token (all optional).
SEED_QUERY = (
    "server",
    "label",
    "hostname_template",
    "install_disk",
    "ip",
    "gateway",
    "dns",
    "interface",
)


def seed_document(request: web.Request) -> dict[str, Any]:
    """The seed (without its token) the query asks for; ``registration.seed`` checks it."""
    query = request.query
    unknown = set(query) - set(SEED_QUERY)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    settings = request.app[SETTINGS]
    server = query.get("server") or settings.public_url or f"https://{request.host}"
    document: dict[str, Any] = {"server": server}
    labels: dict[str, str] = {}
    for item in query.getall("label", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise BadRequest(f"label {item!r} must be KEY=VALUE", code="bad_seed")
        labels[key] = value
    if labels:
        document["labels"] = labels
    for name in ("hostname_template", "install_disk"):
        if query.get(name):
            document[name] = query[name]
    network = {
        "address": query.get("ip"),
        "gateway": query.get("gateway"),
        "dns": query.getall("dns", []),
        "interface": query.get("interface"),
    }
    if network["address"]:
        document["network"] = {k: v for k, v in network.items() if v}
    elif any(network.values()):
        raise BadRequest("gateway, dns and interface need ip=ADDR/PREFIX", code="bad_seed")
    return document


async def seed_iso(request: web.Request) -> web.StreamResponse:
    """The seeded ISO, whole (200) or from a Range (206), a chunk at a time."""
    app = request.app
    image = await seed_ops.seed_image(
        app[STORE],
        app[TOKEN_SEALER],
        app[SETTINGS].artifacts_dir,
        app[CA].fingerprint,
        request.match_info["token_id"],
        seed_document(request),
    )
    base = image.base
    span = byte_range(request, base.size, image.etag)
    response, start, stop = ranged_response(span, base.size, image.etag)
    response.headers["Content-Disposition"] = f'attachment; filename="{image.filename}"'
    chunks = seedslot.stream(base.path, base.slot_offset, image.slot, start, stop, SEND_CHUNK)
    try:
        first = await asyncio.to_thread(next, chunks, b"")
    except FileNotFoundError as e:
        raise NotFound(f"base ISO {base.artifact_id} has no file in the mirror") from e
    sent = 0
    try:
        await response.prepare(request)
        chunk = first
        while chunk:
            await response.write(chunk)
            sent += len(chunk)
            chunk = await asyncio.to_thread(next, chunks, b"")
        if sent != stop - start:
            raise NotFound(f"base ISO {base.artifact_id}: the file is shorter than recorded")
        await response.write_eof()
    except ConnectionError:
        log.info("seed ISO download for %s cut after %s bytes", image.seed.token.token_id, sent)
    finally:
        await asyncio.to_thread(chunks.close)
    return response
