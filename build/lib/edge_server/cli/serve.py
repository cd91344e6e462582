"""``corral serve``: run the server over HTTPS on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from edge_server import bootstrap
from edge_server.app import create_app
from edge_server.pki import Pki
from edge_server.server_certs import SERVER_CERTS
from edge_server.settings import Settings, load

log = logging.getLogger(__name__)


class OneLineProtocolErrors(logging.Filter):
    """Malformed HTTP (a bad request line or header, garbage after the TLS handshake) is what
    any client on the network can send: one line each, never a traceback to flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())[:160]
            record.msg = "refused malformed HTTP from %s: %s %s"
            record.args = (*(record.args or ()), exc.code, reason)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# aiohttp's request handler logs protocol errors here instead of on ``aiohttp.server``.
http_log = logging.getLogger("edge_server.http")
http_log.addFilter(OneLineProtocolErrors())

#: The request line may be this long (aiohttp's default, 8 KiB, answers a long label selector
#: with its own plain-text 400): the selector's term cap then answers with a JSON error.
MAX_REQUEST_LINE = 64 * 1024


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("serve", help="run the Corral server")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 0.0.0.0:8443)")
    p.add_argument(
        "--san", action="append", default=[], help="extra name or IP for the server certificate"
    )
    p.add_argument("--public-url", help="the URL devices use to reach this server")
    p.add_argument(
        "--device-cert-lifetime", help="how long device certificates last (default 365d)"
    )
    add_mqtt_arguments(p)
    p.set_defaults(func=run)


def add_mqtt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mqtt-listen", help="HOST:PORT of the embedded MQTT broker (default 0.0.0.0:8883)"
    )
    p.add_argument(
        "--mqtt-url", help="use an external broker (mqtts://host:port) instead of the embedded one"
    )
    p.add_argument("--mqtt-public-url", help="the MQTT URL devices are told to use")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load(
        data_dir=args.data_dir,
        listen=args.listen,
        sans=args.san,
        public_url=args.public_url,
        mqtt_listen=args.mqtt_listen,
        mqtt_url=args.mqtt_url,
        mqtt_public_url=args.mqtt_public_url,
        device_cert_lifetime=getattr(args, "device_cert_lifetime", None),
    )


def announce_first_start(settings: Settings, creds: bootstrap.AdminCredentials | None) -> None:
    """The admin's credentials, made on the data dir's first start (``creds`` not None)."""
    if creds is None:
        return
    sys.stdout.write(
        "Corral first start. These are shown once:\n"
        f"  admin user:      {creds.username}\n"
        f"  admin password:  {creds.password}\n"
        f"  admin API token: {creds.api_token}\n"
        f"  (the API token is saved 0600 in {settings.admin_token_path})\n"
    )
    sys.stdout.flush()


def announce(settings: Settings, creds: bootstrap.AdminCredentials | None) -> None:
    """The first-start credentials, then where the server is serving."""
    announce_first_start(settings, creds)
    out = sys.stdout
    ca = Pki(settings.pki_dir).load_ca()
    out.write(
        f"Corral serving on https://{settings.host}:{settings.port}"
        f" (data {settings.data_dir}, CA sha256 {ca.fingerprint})\n"
        f"MQTT: {'embedded broker on ' if settings.embedded_broker else 'external broker '}"
        f"{settings.channel_url}\n"
    )
    out.flush()


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    creds = bootstrap.prepare(settings)
    announce(settings, creds)
    asyncio.run(serve_until_signalled(settings))
    log.info("server stopped")
    return 0


async def serve_until_signalled(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT. Further signals during shutdown change nothing (make,
    systemd and shells may all send one)."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=10,
        keepalive_timeout=15,
        logger=http_log,
        max_line_size=MAX_REQUEST_LINE,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        host=settings.host or None,
        port=settings.port,
        ssl_context=app[SERVER_CERTS].https,
        backlog=1024,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
