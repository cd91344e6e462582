"""Device registration: check the token and CSR, find or create the device, sign its cert.

The decision and the writes happen in one writer job, so token use counting and the
one-device-per-machine rule hold under any concurrency, and a failed registration
leaves nothing behind (its savepoint is rolled back). :func:`check_request` needs no
database; :func:`commit` is that writer job. ``ops.registration.register`` runs both.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from sqlite_utils import Database

from edge_server import specs
from edge_server.errors import BadRequest, Conflict, Unauthorized
from edge_server.ops.certificates import issue_and_record
from edge_server.store import devices as devices_store
from edge_server.store import state as state_store
from edge_server.store import tokens as tokens_store
from edge_server.store.devices import DeviceWrite
from edge_server.store.rows import audit
from registration import identity, templating, tokens
from registration.protocol import (
    SUPPORTED_PROTOCOLS,
    Endpoints,
    RegisterRequest,
    RegisterResponse,
)


@dataclass(frozen=True)
class Checked:
    """A registration request whose token and CSR are well-formed."""

    doc: RegisterRequest
    token: tokens.RegistrationToken
    public_key: ec.EllipticCurvePublicKey
    public_key_sha256: str
    machine_id: str
    dmi_uuid: str | None


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(6)


def machine_id(dmi_uuid: str | None, public_key_sha256: str) -> str:
    """Same machine = same DMI UUID. Boards without one are known by their key."""
    return f"dmi:{dmi_uuid}" if dmi_uuid else f"key:{public_key_sha256}"


def check_request(doc: RegisterRequest, ca_fingerprint: str) -> Checked:
    """Steps that need no database: protocol version, token format and CA, CSR."""
    if doc.protocol_version not in SUPPORTED_PROTOCOLS:
        raise BadRequest(
            f"protocol version {doc.protocol_version} is not supported; "
            f"this server speaks {sorted(SUPPORTED_PROTOCOLS)}",
            code="unsupported_protocol",
        )
    token = tokens.parse(doc.token)
    if token.ca_fingerprint != ca_fingerprint:
        raise Unauthorized("token was issued by a different Corral CA", code="unknown_token")
    csr = identity.load_csr(doc.csr)
    public_key = identity.csr_public_key(csr)
    key_sha = identity.public_key_fingerprint(public_key)
    dmi_uuid = (doc.facts.dmi.get("product_uuid") or "").strip().lower() or None
    return Checked(doc, token, public_key, key_sha, machine_id(dmi_uuid, key_sha), dmi_uuid)


def _check_token(row: dict[str, object] | None, token: tokens.RegistrationToken) -> None:
    if row is None or not tokens.secret_matches(token.secret, str(row["secret_hash"])):
        raise Unauthorized("registration token is not known", code="unknown_token")
    if row["revoked_at"] is not None:
        raise Unauthorized("registration token has been revoked", code="revoked_token")
    expires = row["expires_at"]
    if isinstance(expires, float | int) and expires <= time.time():
        raise Unauthorized("registration token has expired", code="expired_token")


def commit(
    db: Database,
    ca: identity.CertificateAuthority,
    req: Checked,
    api_url: str,
    mqtt_url: str | None,
    cert_lifetime: dt.timedelta,
) -> tuple[list[specs.Change], RegisterResponse]:
    # 1. The token: known, right secret, not revoked, not expired.
    row = tokens_store.get_with_secret(db, req.token.token_id)
    _check_token(row, req.token)
    assert row is not None  # noqa: S101 - _check_token raised otherwise
    # 2. The machine: the same one again, a reset one, or a new one.
    existing = devices_store.by_machine_id(db, req.machine_id)
    if existing is not None:
        known_key = existing["public_key_sha256"]
        if known_key is not None and known_key != req.public_key_sha256:
            raise Conflict(
                f"device {existing['id']} is already registered with another key; an operator "
                "must reset or delete it first",
                code="device_key_mismatch",
            )
        device_id, created = str(existing["id"]), False
        if known_key is None:
            # An operator reset this device: a new agent, with a new outbox, takes it over.
            state_store.forget_status(db, device_id)
        operator_labels = dict(existing["labels_operator"])
    else:
        max_uses = row["max_uses"]
        if max_uses is not None and int(row["uses"]) >= int(max_uses):
            raise Conflict("registration token has no uses left", code="token_exhausted")
        tokens_store.count_use(db, req.token.token_id)
        device_id, created = new_device_id(), True
        operator_labels = {}
    # 3. Name and labels from the token's templates and the device's facts.
    values = templating.context(req.doc.facts, req.doc.labels)
    name = templating.render_name(str(row["name_template"]), values, device_id[4:12])
    token_labels = templating.render_labels(dict(row["labels"]), values)
    # 4. The record.
    devices_store.upsert(
        db,
        DeviceWrite(
            id=device_id,
            name=name,
            machine_id=req.machine_id,
            dmi_uuid=req.dmi_uuid,
            public_key_sha256=req.public_key_sha256,
            group_name=str(row["group_name"]),
            labels_local=dict(req.doc.labels),
            labels_token=token_labels,
            facts=req.doc.facts.model_dump(),
            agent_version=req.doc.agent_version,
            protocol_version=req.doc.protocol_version,
            token_id=req.token.token_id,
        ),
        operator=operator_labels,
    )
    # 5. The certificate, with its serial recorded.
    cert = issue_and_record(db, ca, device_id, req.public_key, cert_lifetime)
    serial = cert.serial_number
    changes = specs.recompute(db, [device_id])
    if existing is not None and not changes:
        state = state_store.get(db, device_id)
        if state is not None:  # re-announce the generation and the (maybe reset) acked seq
            changes = [specs.Change(device_id, int(state["generation"]), int(state["acked_seq"]))]
    audit(
        db,
        f"token:{req.token.token_id}",
        "device.register" if created else "device.reregister",
        device_id,
        serial=str(serial),
    )
    labels = devices_store.effective_labels(dict(req.doc.labels), token_labels, operator_labels)
    return changes, RegisterResponse(
        device_id=device_id,
        name=name,
        certificate=identity.cert_to_pem(cert).decode(),
        ca=ca.pem,
        serial=str(serial),
        labels=labels,
        group=str(row["group_name"]),
        endpoints=Endpoints(api=api_url, mqtt=mqtt_url),
        created=created,
    )
