"""The aiohttp application factory. One cleanup context per long-lived resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from edge_server import api
from edge_server.api.middleware import errors
from edge_server.keys import CA, CA_PEM, REGISTER_LIMITER, SETTINGS, STORE
from edge_server.pki import Pki
from edge_server.ratelimit import FailureLimiter
from edge_server.settings import Settings
from edge_server.store import Store
from registration import identity

log = logging.getLogger(__name__)


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = Store(app[SETTINGS].db_path)
    await store.start()
    app[STORE] = store
    yield
    await store.close()


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
    app = web.Application(middlewares=[errors], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    pki = Pki(settings.pki_dir)
    ca = pki.load_ca()
    app[CA] = ca
    app[CA_PEM] = identity.cert_to_pem(ca.cert).decode()
    app[REGISTER_LIMITER] = FailureLimiter(settings.register_failures_per_minute)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_blocking_guard)
    app.add_routes(api.routes())
    return app
