"""Revocation beyond HTTPS: the embedded broker asks the store itself; an external broker
reads a CRL, which is rewritten here whenever a device is deleted or reset."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from edge_server import mosquitto
from edge_server.keys import CA, SETTINGS, STORE
from edge_server.pki import write_public
from edge_server.store import devices as devices_store

log = logging.getLogger(__name__)


async def refresh_crl(app: web.Application) -> None:
    path = app[SETTINGS].mqtt_crl_path
    if path is None:
        return
    serials = await app[STORE].read(devices_store.revoked_serials)
    pem = mosquitto.make_crl(app[CA], serials)
    await asyncio.to_thread(write_public, path, pem)
    log.info("wrote CRL with %d serial(s) to %s; reload the broker (SIGHUP)", len(serials), path)
