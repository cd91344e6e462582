"""Ending devices' live MQTT sessions when they are revoked (delete, reset).

The notifier calls ``app[SESSIONS].end(device_ids)`` after a revocation commits and the CRL
has been rewritten. Each broker kind provides its own ``SessionControl`` (chosen in
``app.py``):

- **Embedded broker**: ``EmbeddedBroker.end`` closes the devices' connections; the gate asks
  the store when they reconnect and refuses them.
- **Mosquitto**: :class:`MosquittoSessions`. First Mosquitto rereads the CRL
  (``mosquitto.reload``: SIGHUP to the pid in its pid file), so the revoked certificate is
  refused from then on. Then the server takes each device's session over: it connects with
  the device's client id, which (``use_username_as_clientid``) only a certificate with that
  CN can do, so it mints one: a certificate for that CN, valid for minutes, whose key never
  leaves memory. Mosquitto closes the device's connection for the newcomer, and the
  newcomer's clean session discards the device's subscriptions and queued messages; the
  server then disconnects. The device's reconnect is refused by the CRL.

  Why not the dynamic-security plugin's ``disableClient``: it kicks only clients it manages
  (with passwords in its own JSON file), and Corral's devices are known by certificate alone;
  every device would have to be mirrored into that file. A takeover needs nothing from
  Mosquitto beyond the CA the server already holds. Without a pid file Mosquitto can read
  (or permission to signal it), the CRL is not reread: the server logs a warning, the
  takeover still cuts the session, and the device reconnects until Mosquitto is reloaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_server import mosquitto
from registration import identity
from registration.mqtt import ClosingClient

log = logging.getLogger(__name__)

TAKEOVER_CERT_LIFETIME = dt.timedelta(minutes=10)
TAKEOVER_TIMEOUT = 10.0
CONCURRENT_TAKEOVERS = 16


class SessionControl(Protocol):
    async def end(self, device_ids: Sequence[str]) -> None:
        """End the live MQTT sessions of these devices, within seconds."""


class NoSessionControl:
    """An external broker Corral did not configure (no ``mqtt.json``): nothing to do."""

    async def end(self, device_ids: Sequence[str]) -> None:
        return None


class MosquittoSessions:
    """Mosquitto written by ``corral broker mosquitto-config`` (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        ca: identity.CertificateAuthority,
        files: mosquitto.MosquittoFiles,
    ) -> None:
        self._host = host
        self._port = port
        self._ca = ca
        self._files = files
        self._limit = asyncio.Semaphore(CONCURRENT_TAKEOVERS)

    async def end(self, device_ids: Sequence[str]) -> None:
        if not device_ids:
            return
        try:
            await asyncio.to_thread(mosquitto.reload, self._files)
        except mosquitto.ReloadError as e:
            log.warning("%s; revoked devices can reconnect until Mosquitto is reloaded", e)
        await asyncio.gather(*(self._take_over(d) for d in device_ids))

    async def _take_over(self, device_id: str) -> None:
        async with self._limit:
            try:
                tls = await asyncio.to_thread(self._tls_as, device_id)
                async with asyncio.timeout(TAKEOVER_TIMEOUT):
                    async with ClosingClient(
                        self._host,
                        self._port,
                        identifier=device_id,
                        tls_context=tls,
                        clean_session=True,
                        timeout=TAKEOVER_TIMEOUT,
                    ):
                        pass
            except (aiomqtt.MqttError, TimeoutError, OSError) as e:
                log.warning("could not end the MQTT session of %s: %s", device_id, e)
                return
        log.info("ended the MQTT session of %s on Mosquitto", device_id)

    def _tls_as(self, device_id: str) -> ssl.SSLContext:
        """A client TLS context with a fresh, short-lived certificate for ``device_id``
        (blocking: ``load_cert_chain`` reads files, which live only for that call)."""
        key = identity.generate_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self._ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(identity.new_serial())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + TAKEOVER_CERT_LIFETIME)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self._ca.key, hashes.SHA256())
        )
        context = ssl.create_default_context(cafile=str(self._files.ca))
        with tempfile.TemporaryDirectory(prefix="corral-takeover-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            key_path.touch(mode=0o600)
            key_path.write_bytes(identity.key_to_pem(key))
            cert_path.write_bytes(identity.cert_to_pem(cert))
            context.load_cert_chain(cert_path, key_path)
        return context
