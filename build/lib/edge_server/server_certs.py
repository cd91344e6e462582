"""The server's own certificates, renewed while it runs.

The HTTPS certificate (the embedded broker serves it too) and the server's MQTT client
certificate last 27 months. At start and then every ``server_cert_check_interval``, the
server re-issues those that expire within ``server_cert_renew_before`` (``Pki.renew``) and
puts them to use without a restart:

- the live TLS contexts (HTTPS, embedded broker) load the new certificate: ``load_cert_chain``
  on the same context object, so new handshakes get it and open connections keep theirs;
- the MQTT channel reconnects, with a TLS context built from the new files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from edge_server.pki import Pki, Renewal
from registration.errors import RegistrationError

log = logging.getLogger(__name__)


class ServerCertificates:
    """The TLS state fed by the server's own certificates, and who to tell when they change.

    Build it before the loop runs (it reads files)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        #: The HTTPS listener's context, reloaded in place on renewal.
        self.https: ssl.SSLContext = pki.server_ssl_context()
        current = pki.mqtt_client_serial()
        self._mqtt_client_serial = current
        #: The MQTT client certificates the broker admits as the server: the current one and
        #: the one before it (still valid; a renewal revokes nothing).
        self.mqtt_client_serials: frozenset[int] = frozenset({current})
        self._server_renewed: list[Callable[[], None]] = [self._reload_https]
        self._mqtt_client_renewed: list[Callable[[], None]] = []

    def on_server_renewed(self, callback: Callable[[], None]) -> None:
        """``callback`` runs on the loop after the server certificate file changed."""
        self._server_renewed.append(callback)

    def on_mqtt_client_renewed(self, callback: Callable[[], None]) -> None:
        """``callback`` runs on the loop after the MQTT client certificate file changed."""
        self._mqtt_client_renewed.append(callback)

    async def keep_renewed(
        self, names: list[str], renew_before: dt.timedelta, every: dt.timedelta
    ) -> None:
        """Check now, then every ``every``, forever. A failed check is logged and retried at
        the next one: the certificates still have up to ``renew_before`` to go."""
        while True:
            try:
                renewal, serial = await asyncio.to_thread(self._renew, names, renew_before)
                self._apply(renewal, serial)
            except (OSError, ValueError, RegistrationError) as e:  # ssl.SSLError is an OSError
                log.error("cannot renew the server's certificates: %s; next try in %s", e, every)
            await asyncio.sleep(every.total_seconds())

    def _renew(self, names: list[str], renew_before: dt.timedelta) -> tuple[Renewal, int]:
        renewal = self.pki.renew(names, renew_before)
        return renewal, self.pki.mqtt_client_serial()

    def _apply(self, renewal: Renewal, mqtt_client_serial: int) -> None:
        """On the loop thread on purpose: the handshakes using these contexts run there, and
        an SSL context must not change under a handshake in another thread. It reads two small
        files, at most once per check."""
        if renewal.mqtt_client:
            self.mqtt_client_serials = frozenset({self._mqtt_client_serial, mqtt_client_serial})
            self._mqtt_client_serial = mqtt_client_serial
        for callback in self._server_renewed if renewal.server else ():
            callback()
        for callback in self._mqtt_client_renewed if renewal.mqtt_client else ():
            callback()

    def _reload_https(self) -> None:
        self.https.load_cert_chain(self.pki.server_cert_path, self.pki.server_key_path)


SERVER_CERTS = web.AppKey("server_certs", ServerCertificates)
