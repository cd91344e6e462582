"""The server's PKI on disk: the Corral CA, the server certificate, and the TLS context."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from cryptography import x509

from edge_server.settings import Settings
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


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_cert_path = directory / "ca.pem"
        self.ca_key_path = directory / "ca-key.pem"
        self.server_cert_path = directory / "server.pem"
        self.server_key_path = directory / "server-key.pem"
        self.mqtt_client_cert_path = directory / "mqtt-client.pem"
        self.mqtt_client_key_path = directory / "mqtt-client-key.pem"

    def ensure(self, names: list[str]) -> identity.CertificateAuthority:
        """Create the CA on first start; (re)issue the server certificate when names change."""
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
        return ca

    def mqtt_client_serial(self) -> int:
        return identity.cert_from_pem(self.mqtt_client_cert_path.read_bytes()).serial_number

    def load_ca(self) -> identity.CertificateAuthority:
        return identity.CertificateAuthority(
            cert=identity.cert_from_pem(self.ca_cert_path.read_bytes()),
            key=identity.key_from_pem(self.ca_key_path.read_bytes()),
        )

    def _server_cert_stale(self, names: list[str]) -> bool:
        if not (self.server_cert_path.exists() and self.server_key_path.exists()):
            return True
        cert = identity.cert_from_pem(self.server_cert_path.read_bytes())
        if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
            return True
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


def for_settings(settings: Settings) -> Pki:
    return Pki(settings.pki_dir)
