"""First-boot registration: pin the CA, send a CSR and facts, keep the certificate.

Reads as a list of steps (see :func:`register`). Safe to re-run: the key is kept, and the
server answers the same machine with the same device record.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from node_image.agent import __version__
from node_image.agent.seed import Seed
from node_image.agent.state import StateDir
from node_image.agent.transport import ApiError, Https, unverified_tls
from node_image.errors import AgentError
from registration import facts as facts_mod
from registration import identity
from registration.document import ValidationError
from registration.errors import RegistrationError
from registration.protocol import PROTOCOL_VERSION, Facts, RegisterRequest, RegisterResponse

log = logging.getLogger(__name__)
TIMEOUT = 30.0


@dataclass(frozen=True)
class Result:
    device_id: str
    name: str
    created: bool
    refreshed: bool = True


def load_or_create_key(state: StateDir) -> identity.PrivateKey:
    if state.key.exists():
        return identity.key_from_pem(state.key.read_bytes())
    key = identity.generate_key()
    state.write(state.key, identity.key_to_pem(key), mode=0o600)
    return key


def fetch_verified_ca(
    server: str, ca_fingerprint: str, timeout: float = TIMEOUT
) -> x509.Certificate:
    """Fetch the server's CA over unverified TLS, then trust it only if its sha256 matches
    ``ca_fingerprint`` (K3s does the same with its ``K10`` tokens). The seeder checks a
    server URL against a token the same way."""
    https = Https(server, unverified_tls(), timeout)
    try:
        reply = https.request("GET", "/api/v1/ca")
    except ApiError as e:
        raise AgentError(f"cannot fetch the CA from {server}: {e}") from e
    finally:
        https.close()
    if reply.status != 200:
        raise AgentError(f"cannot fetch the CA from {server}: HTTP {reply.status}")
    try:
        return identity.verify_ca_fingerprint(reply.body, ca_fingerprint)
    except RegistrationError as e:
        raise AgentError(str(e)) from e


def fetch_pinned_ca(seed: Seed, state: StateDir) -> Path:
    """Fetch and pin the server's CA (:func:`fetch_verified_ca`), kept in the state dir."""
    ca = fetch_verified_ca(seed.server, seed.token.ca_fingerprint)
    state.write(state.ca, identity.cert_to_pem(ca))
    return state.ca


def send(seed: Seed, ca_path: Path, doc: RegisterRequest) -> RegisterResponse:
    """POST the request, over TLS verified against the pinned CA."""
    https = Https(seed.server, ssl.create_default_context(cafile=str(ca_path)), TIMEOUT)
    try:
        reply = https.request(
            "POST",
            "/api/v1/register",
            doc.model_dump_json().encode(),
            {"Content-Type": "application/json"},
        )
    except ApiError as e:
        raise AgentError(f"cannot reach {seed.server}: {e}") from e
    finally:
        https.close()
    if reply.status not in (200, 201):
        raise RegisterRefused(
            reply.status, f"registration refused ({reply.status} {reply.error_detail()})"
        )
    try:
        return RegisterResponse.model_validate_json(reply.body)
    except ValidationError as e:
        raise AgentError(f"the server's registration answer does not validate: {e}") from e


class RegisterRefused(AgentError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(
    seed: Seed, state: StateDir, collect: Callable[[], Facts] = facts_mod.collect
) -> Result:
    """The steps of registration, in order."""
    state.ensure()
    # 1. Our key: generated here, kept 0600, never sent.
    key = load_or_create_key(state)
    # 2. Pin the CA before the token leaves this device.
    ca_path = fetch_pinned_ca(seed, state)
    # 3. What this machine is.
    facts: Facts = collect()
    doc = RegisterRequest(
        token=str(seed.token),
        csr=identity.make_csr(key).decode(),
        facts=facts,
        labels=seed.labels,
        agent_version=__version__,
        protocol_version=PROTOCOL_VERSION,
    )
    # 4. Register. A device that already has an identity keeps it if the token has lapsed.
    previous = state.read_identity()
    try:
        answer = send(seed, ca_path, doc)
    except RegisterRefused as e:
        if previous is not None and e.status == 401:
            log.warning("kept identity %s; could not refresh it: %s", previous["device_id"], e)
            return Result(previous["device_id"], previous["name"], created=False, refreshed=False)
        raise
    # 5. Keep the certificate and what the server told us.
    state.write(state.cert, answer.certificate.encode())
    state.write(state.ca, answer.ca.encode())
    if answer.update_signing_key is not None:
        state.write(state.update_signing_pub, answer.update_signing_key.encode() + b"\n")
    validity = identity.validity(identity.cert_from_pem(answer.certificate.encode()))
    state.write_identity(
        {
            "device_id": answer.device_id,
            "name": answer.name,
            "serial": answer.serial,
            # Unix seconds: renewal timing without parsing the certificate (renew.py).
            "cert_not_before": validity[0],
            "cert_not_after": validity[1],
            "server": seed.server,
            "endpoints": answer.endpoints.model_dump(),
            "labels": answer.labels,
            "group": answer.group,
        }
    )
    return Result(answer.device_id, answer.name, answer.created)
