"""Keys, CSRs, the Corral CA, and issuing and checking certificates (``cryptography``)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registration.errors import CSRError, FingerprintMismatch

DEVICE_CERT_LIFETIME = dt.timedelta(days=365)
CA_DAYS = 3650
SERVER_CERT_LIFETIME = dt.timedelta(days=825)
#: How far back ``notBefore`` is set, for clocks a little behind; at most a tenth of the
#: lifetime, so that a short test lifetime is not mostly in the past.
BACKDATE = dt.timedelta(minutes=5)
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MAX_CSR_BYTES = 8192

PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CSRError("only EC private keys are used by Corral")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER certificate, lowercase hex: what a registration token pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def public_key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def verify_ca_fingerprint(ca_pem: bytes, expected: str) -> x509.Certificate:
    """Load the CA a server presents and fail closed unless it matches the pinned hash."""
    try:
        ca = cert_from_pem(ca_pem)
    except ValueError as e:
        raise FingerprintMismatch(f"server sent a CA that is not a PEM certificate: {e}") from e
    actual = fingerprint(ca)
    if not secrets.compare_digest(actual, expected):
        raise FingerprintMismatch(
            f"server CA sha256 {actual[:16]}… does not match the token's {expected[:16]}…; "
            "refusing to talk to this server"
        )
    return ca


def make_csr(key: PrivateKey, common_name: str = "corral-device") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: object) -> x509.CertificateSigningRequest:
    """Parse a CSR and check it: valid PEM, valid self-signature, allowed key type."""
    if not isinstance(pem, str):
        raise CSRError("csr must be a PEM string")
    if len(pem) > MAX_CSR_BYTES:
        raise CSRError("csr is too large")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as e:
        raise CSRError(f"csr is not a valid PEM certificate request: {e}") from e
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        raise CSRError(f"RSA-{key.key_size} keys are not allowed; use EC P-256 or P-384")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ALLOWED_CURVES):
        raise CSRError("key type is not allowed; use EC P-256 or P-384")
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature) as e:
        raise CSRError(f"csr signature cannot be checked: {e}") from e
    if not valid:
        raise CSRError("csr signature is not valid")
    return csr


def csr_public_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # noqa: S101 - load_csr checked it
    return key


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: PrivateKey

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @classmethod
    def create(cls, name: str = "Corral CA") -> CertificateAuthority:
        key = generate_key()
        now = _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def _builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        lifetime: dt.timedelta,
    ) -> x509.CertificateBuilder:
        if lifetime <= dt.timedelta(0):
            raise ValueError(f"certificate lifetime must be positive, not {lifetime}")
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - min(BACKDATE, lifetime / 10))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(self._authority_key_id, critical=False)
        )

    @functools.cached_property
    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    @functools.cached_property
    def pem(self) -> str:
        """The CA certificate as PEM text (what devices pin and trust)."""
        return cert_to_pem(self.cert).decode()

    def issue_device(
        self,
        device_id: str,
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        lifetime: dt.timedelta = DEVICE_CERT_LIFETIME,
    ) -> x509.Certificate:
        """A client certificate whose CN is the device id."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        )
        return (
            self._builder(subject, public_key, serial, lifetime)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_client(
        self,
        key: PrivateKey,
        common_name: str,
        lifetime: dt.timedelta = SERVER_CERT_LIFETIME,
    ) -> x509.Certificate:
        """A client certificate for a service identity (the server's own MQTT client)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return (
            self._builder(subject, key.public_key(), new_serial(), lifetime)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_server(
        self,
        key: PrivateKey,
        names: list[str],
        common_name: str = "corral-server",
        lifetime: dt.timedelta = SERVER_CERT_LIFETIME,
    ) -> x509.Certificate:
        """A TLS server certificate for these DNS names and IP addresses."""
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return (
            self._builder(subject, key.public_key(), new_serial(), lifetime)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    cert_key = cert.public_key()
    return isinstance(cert_key, ec.EllipticCurvePublicKey) and public_key_fingerprint(
        cert_key
    ) == public_key_fingerprint(key.public_key())


def new_serial() -> int:
    """A positive serial below 2**63, so it fits a SQLite INTEGER."""
    return secrets.randbits(63) | 1


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validity(cert: x509.Certificate) -> tuple[float, float]:
    """``(not_before, not_after)`` in Unix seconds."""
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
