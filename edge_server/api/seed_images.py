"""``GET /api/v1/tokens/{token_id}/seed.iso``: the newest base ISO with the token's seed in
its seed slot, streamed (``ops.seed_images``).

No copy is stored: the base ISO is read a chunk at a time in a thread and the slot's bytes
are substituted on the way out (``node_image.image.seedslot.stream``), so the answer is
byte for byte what ``corral image seed`` writes for the same seed. Range resumes a cut
download; the ETag changes with the base ISO and the seed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from edge_server.api.artifacts import SEND_CHUNK, byte_range
from edge_server.auth import operator
from edge_server.errors import BadRequest, NotFound
from edge_server.keys import CA, SETTINGS, STORE, TOKEN_SEALER
from edge_server.ops import seed_images as seed_ops
from node_image.image import seedslot

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

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


@routes.get("/api/v1/tokens/{token_id}/seed.iso")
@operator("operator")
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
    start, stop = span if span is not None else (0, base.size)
    chunks = seedslot.stream(base.path, base.slot_offset, image.slot, start, stop, SEND_CHUNK)
    try:
        first = await asyncio.to_thread(next, chunks, b"")
    except FileNotFoundError as e:
        raise NotFound(f"base ISO {base.artifact_id} has no file in the mirror") from e
    response = web.StreamResponse(status=206 if span is not None else 200)
    response.content_type = "application/octet-stream"
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = image.etag
    response.headers["Content-Disposition"] = f'attachment; filename="{image.filename}"'
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{base.size}"
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
