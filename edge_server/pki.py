"""The server's PKI on disk: the Corral CA, the server certificate, and the TLS context."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from registration import identity
from registration.atomic import atomic_write

log = logging.getLogger(__name__)

RENEW_BEFORE = dt.timedelta(days=30)
MQTT_IDENTITY = "corral-server"


def write_private(path: Path, data: bytes) -> None:
    """Write a secret, 0600 from the first byte, atomically and durably."""
    atomic_write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate or CRL, 0644, atomically and durably."""
    atomic_write(path, data, 0o644)


@dataclass(frozen=True)
class Renewal:
    """Which of the server's own certificates :meth:`Pki.renew` re-issued."""

    server: bool = False
    mqtt_client: bool = False


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_cert_path = directory / "ca.pem"
        self.ca_key_path = directory / "ca-key.pem"
        self.server_cert_path = directory / "server.pem"
        self.server_key_path = directory / "server-key.pem"
        self.mqtt_client_cert_path = directory / "mqtt-client.pem"
        self.mqtt_client_key_path = directory / "mqtt-client-key.pem"
        #: ed25519, separate from the CA: signs artifacts (``edge_server.signing``).
        self.update_signing_key_path = directory / "update-signing.key"
        #: AES-256-GCM: seals registration tokens' secrets (``edge_server.sealing``).
        self.token_seal_key_path = directory / "token-seal.key"

    def ensure(
        self, names: list[str], renew_before: dt.timedelta = RENEW_BEFORE
    ) -> identity.CertificateAuthority:
        """Create the CA on first start; (re)issue the server certificate when names change;
        renew the server's certificates that are within ``renew_before`` of expiry."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.ca_key_path.exists():
            ca = self.load_ca()
        else:
            ca = identity.CertificateAuthority.create()
            write_private(self.ca_key_path, identity.key_to_pem(ca.key))
            write_public(self.ca_cert_path, identity.cert_to_pem(ca.cert))
            log.info("created Corral CA %s", ca.fingerprint)
        if self._server_cert_stale(names):
            key = identity.generate_key()
            cert = ca.issue_server(key, names)
            write_private(self.server_key_path, identity.key_to_pem(key))
            write_public(self.server_cert_path, identity.cert_to_pem(cert))
            log.info("issued server certificate for %s", ", ".join(names))
        if not self.mqtt_client_cert_path.exists():
            key = identity.generate_key()
            cert = ca.issue_client(key, MQTT_IDENTITY)
            write_private(self.mqtt_client_key_path, identity.key_to_pem(key))
            write_public(self.mqtt_client_cert_path, identity.cert_to_pem(cert))
        self.renew(names, renew_before)
        return ca

    def renew(self, names: list[str], renew_before: dt.timedelta) -> Renewal:
        """Re-issue the server certificate and the MQTT client certificate that expire within
        ``renew_before``, each for its existing key: only the certificate file changes, in
        one atomic rename, so the key and certificate on disk always match. Blocking."""
        server = self._expires_within(self.server_cert_path, renew_before)
        mqtt_client = self._expires_within(self.mqtt_client_cert_path, renew_before)
        if server or mqtt_client:
            ca = self.load_ca()
        if server:
            key = identity.key_from_pem(self.server_key_path.read_bytes())
            cert = ca.issue_server(key, names)
            write_public(self.server_cert_path, identity.cert_to_pem(cert))
            log.info("renewed the server certificate: serial %x", cert.serial_number)
        if mqtt_client:
            key = identity.key_from_pem(self.mqtt_client_key_path.read_bytes())
            cert = ca.issue_client(key, MQTT_IDENTITY)
            write_public(self.mqtt_client_cert_path, identity.cert_to_pem(cert))
            log.info("renewed the MQTT client certificate: serial %x", cert.serial_number)
        return Renewal(server=server, mqtt_client=mqtt_client)

    @staticmethod
    def _expires_within(path: Path, window: dt.timedelta) -> bool:
        cert = identity.cert_from_pem(path.read_bytes())
        return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < window

    def mqtt_client_serial(self) -> int:
        return identity.cert_from_pem(self.mqtt_client_cert_path.read_bytes()).serial_number

    def load_ca(self) -> identity.CertificateAuthority:
        return identity.CertificateAuthority(
            cert=identity.cert_from_pem(self.ca_cert_path.read_bytes()),
            key=identity.key_from_pem(self.ca_key_path.read_bytes()),
        )

    def _server_cert_stale(self, names: list[str]) -> bool:
        """Missing, or not covering every name the server answers to."""
        if not (self.server_cert_path.exists() and self.server_key_path.exists()):
            return True
        cert = identity.cert_from_pem(self.server_cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return True
        have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        return not set(names) <= have

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS for the API. Client certificates are optional at the TLS layer: operators use
        API tokens, devices present their certificate, and handlers decide which they need."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert_path, self.server_key_path)
        ctx.load_verify_locations(self.ca_cert_path)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx
