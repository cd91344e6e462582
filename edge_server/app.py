"""The aiohttp application factory. One cleanup context per long-lived resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from edge_server import api
from edge_server.api.middleware import errors
from edge_server.channel import Channel, ChannelSettings
from edge_server.keys import (
    ARTIFACTS_SERVED,
    CA,
    CA_PEM,
    CHANNEL,
    NOTIFIER,
    REGISTER_LIMITER,
    SESSIONS,
    SETTINGS,
    STORE,
    TOKEN_SEALER,
    UPDATE_SIGNER,
)
from edge_server.mirror import Served, remove_stale_uploads
from edge_server.mosquitto import MosquittoFiles
from edge_server.notifier import Notifier
from edge_server.ops import status as status_ops
from edge_server.pki import MQTT_IDENTITY, Pki
from edge_server.ratelimit import FailureLimiter
from edge_server.sealing import ensure as ensure_sealing_key
from edge_server.server_certs import SERVER_CERTS, ServerCertificates
from edge_server.sessions import MosquittoSessions, NoSessionControl, SessionControl
from edge_server.settings import Settings
from edge_server.signing import ensure as ensure_signing_key
from edge_server.store import Store
from edge_server.store import devices as devices_store
from edge_server.tls import limit_tls_buffers

log = logging.getLogger(__name__)


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = Store(app[SETTINGS].db_path)
    await store.start()
    app[STORE] = store
    yield
    await store.close()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    """The embedded MQTT broker, unless an external one is configured (--mqtt-url); and
    the ``SessionControl`` that ends revoked devices' sessions on it (``sessions.py``)."""
    settings = app[SETTINGS]
    if not settings.embedded_broker:
        app[SESSIONS] = _external_sessions(app)
        yield
        return
    from edge_server.broker import EmbeddedBroker

    pki = Pki(settings.pki_dir)
    store = app[STORE]
    certs = app[SERVER_CERTS]

    async def is_revoked(serial: int, cn: str) -> bool:
        if cn == MQTT_IDENTITY:
            return serial not in certs.mqtt_client_serials
        row = await store.read(lambda db: devices_store.certificate(db, serial))
        return row is None or row["revoked_at"] is not None or row["device_id"] != cn

    broker = EmbeddedBroker(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        ca_path=pki.ca_cert_path,
        cert_path=pki.server_cert_path,
        key_path=pki.server_key_path,
        is_revoked=is_revoked,
        server_identity=MQTT_IDENTITY,
    )
    await broker.start()
    certs.on_server_renewed(broker.reload_certificate)
    app[SESSIONS] = broker
    log.info("embedded MQTT broker on %s", broker.url)
    try:
        yield
    finally:
        await broker.stop()


def _external_sessions(app: web.Application) -> SessionControl:
    """Mosquitto configured by ``corral broker mosquitto-config`` (its CRL is known)."""
    settings = app[SETTINGS]
    crl = settings.mqtt_crl_path
    parts = urlsplit(settings.channel_url)
    if crl is None or parts.hostname is None:
        log.warning("external broker not set up by corral: revoked devices stay connected")
        return NoSessionControl()
    files = MosquittoFiles.under(crl.parent)
    return MosquittoSessions(parts.hostname, parts.port or 8883, app[CA], files)


async def _channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pki = Pki(settings.pki_dir)
    channel = Channel(
        ChannelSettings(
            url=settings.channel_url,
            ca=pki.ca_cert_path,
            cert=pki.mqtt_client_cert_path,
            key=pki.mqtt_client_key_path,
            mqtt5=not settings.embedded_broker,
            share_group=settings.mqtt_share_group,
        ),
        app[STORE],
        app[NOTIFIER],
    )
    await status_ops.all_offline(app[STORE])
    app[CHANNEL] = channel
    app[SERVER_CERTS].on_mqtt_client_renewed(channel.reconnect)
    try:
        async with _background(channel.run(), "mqtt-channel"):
            yield
    finally:
        await channel.close()


async def _server_certificates(app: web.Application) -> AsyncIterator[None]:
    """Renew the server's own certificates while it runs (``server_certs``)."""
    settings = app[SETTINGS]
    renewing = app[SERVER_CERTS].keep_renewed(
        settings.server_names(),
        settings.server_cert_renew_before,
        settings.server_cert_check_interval,
    )
    async with _background(renewing, "server-cert-renewal"):
        yield


@contextlib.asynccontextmanager
async def _background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``work`` as a task for the duration of the block; cancel it on the way out."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _blocking_guard(app: web.Application) -> AsyncIterator[None]:
    """With CORRAL_GUARD_BLOCKING=1 (the test suite sets it), any blocking call on the event
    loop raises, so a handler that touches SQLite or disk on the loop fails its test."""
    if not app[SETTINGS].guard_blocking:
        yield
        return
    from blockbuster import blockbuster_ctx  # dev-only dependency

    with blockbuster_ctx(["edge_server", "registration"]) as bb:
        bb.functions["os.stat"].can_block_in("aiohttp/web_urldispatcher.py", "resolve")
        yield


def create_app(settings: Settings) -> web.Application:
    limit_tls_buffers()
    app = web.Application(middlewares=[errors], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    pki = Pki(settings.pki_dir)
    ca = pki.load_ca()
    app[CA] = ca
    app[CA_PEM] = ca.pem
    app[UPDATE_SIGNER] = ensure_signing_key(pki.update_signing_key_path)
    app[TOKEN_SEALER] = ensure_sealing_key(pki.token_seal_key_path)
    app[ARTIFACTS_SERVED] = Served()
    settings.artifacts_dir.mkdir(mode=0o700, exist_ok=True)
    remove_stale_uploads(settings.artifacts_dir)
    app[REGISTER_LIMITER] = FailureLimiter(settings.register_failures_per_minute)
    app[SESSIONS] = NoSessionControl()
    app[SERVER_CERTS] = ServerCertificates(pki)
    app[NOTIFIER] = Notifier(app)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_broker)
    app.cleanup_ctx.append(_channel)
    app.cleanup_ctx.append(_server_certificates)
    app.cleanup_ctx.append(_blocking_guard)
    app.add_routes(api.routes())
    return app
