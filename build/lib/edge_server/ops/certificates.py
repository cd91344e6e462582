"""Renewing a device certificate.

The device proves who it is with its current certificate (mTLS) and sends a CSR, for the
same key or a new one. The server signs a certificate for the same device id, records its
serial, and audits it. The certificate the device came with stays valid until it expires:
nothing here revokes it, so a device that crashes before it saved the new one carries on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlite_utils import Database

from edge_server.errors import Forbidden
from edge_server.store import Store
from edge_server.store import devices as devices_store
from edge_server.store.rows import audit
from registration import identity


@dataclass(frozen=True)
class RenewedCertificate:
    device_id: str
    serial: int
    #: The serial of the certificate the device presented; still valid until it expires.
    previous_serial: int
    certificate: x509.Certificate
    #: The CSR carried a key other than the device's registered one.
    new_key: bool


async def renew_device_certificate(
    store: Store,
    ca: identity.CertificateAuthority,
    device_id: str,
    presented_serial: int,
    csr_pem: str,
    lifetime: dt.timedelta,
) -> RenewedCertificate:
    """Check the CSR (as registration does), then sign and record in one writer job."""
    public_key = identity.csr_public_key(identity.load_csr(csr_pem))
    return await store.write(
        lambda db: _commit(db, ca, device_id, presented_serial, public_key, lifetime)
    )


def issue_and_record(
    db: Database,
    ca: identity.CertificateAuthority,
    device_id: str,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """Sign a device certificate and record its serial: registration and renewal both do."""
    cert = ca.issue_device(device_id, public_key, identity.new_serial(), lifetime)
    devices_store.add_certificate(
        db,
        cert.serial_number,
        device_id,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )
    return cert


def _commit(
    db: Database,
    ca: identity.CertificateAuthority,
    device_id: str,
    presented_serial: int,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: dt.timedelta,
) -> RenewedCertificate:
    # 1. The certificate the device came with is still its own and not revoked: checked
    #    again here, since a delete or reset may have committed after the handler's check.
    presented = devices_store.certificate(db, presented_serial)
    if (
        presented is None
        or presented["revoked_at"] is not None
        or presented["device_id"] != device_id
    ):
        raise Forbidden("this certificate has been revoked", code="certificate_revoked")
    device = devices_store.get(db, device_id)
    if device is None or device["public_key_sha256"] is None:
        raise Forbidden(f"device {device_id} was deleted or reset", code="certificate_revoked")
    # 2. The new certificate, for the same device id, its serial recorded (the deny-list
    #    covers it from now on).
    cert = issue_and_record(db, ca, device_id, public_key, lifetime)
    serial = cert.serial_number
    # 3. A new key remembered: the same machine registering again is known by it.
    key_sha = identity.public_key_fingerprint(public_key)
    new_key = key_sha != device["public_key_sha256"]
    if new_key:
        devices_store.set_public_key(db, device_id, key_sha)
    # 4. The audit log.
    audit(
        db,
        f"device:{device_id}",
        "device.certificate.renew",
        device_id,
        serial=str(serial),
        previous_serial=str(presented_serial),
        new_key=new_key,
    )
    return RenewedCertificate(device_id, serial, presented_serial, cert, new_key)
