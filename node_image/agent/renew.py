"""Certificate renewal: a new device certificate before the current one runs out.

Once two thirds of the current certificate's lifetime has passed (checked at start, then
when that moment comes), the agent:

1. makes a CSR for the key it already has (the key never leaves the device);
2. sends it to ``POST /api/v1/devices/<id>/certificate`` over mTLS with the current
   certificate;
3. checks the answer: issued by the pinned CA, for this device, for this key;
4. writes it atomically over ``device.pem`` (and the serial into ``identity.json``);
5. loads it into the TLS context that HTTPS and MQTT share, and reconnects MQTT so the
   broker sees it too.

The server leaves the old certificate valid until it expires, so a crash anywhere in
between costs nothing: the next start finds the old certificate and renews again.

Waiting costs no imports: the validity dates are kept in ``identity.json`` (written at
registration and at each renewal). ``cryptography`` is imported only when a renewal is due,
or once for a state directory written before the dates were kept (it adds ~9 MB to an
agent's RSS).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from node_image.agent.mqtt import MqttChannel
from node_image.agent.state import StateDir
from node_image.agent.transport import ApiClient, Backoff
from node_image.errors import AgentError

log = logging.getLogger(__name__)

#: Renew once this fraction of the certificate's lifetime has passed.
RENEW_AT = 2 / 3
#: Re-check at least this often while waiting (a clock that jumps, a suspended machine).
MAX_WAIT = 3600.0
#: Backoff between failed attempts.
RETRY_BASE = 5.0
RETRY_CAP = 3600.0


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def renew_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) * RENEW_AT


def validity(state: StateDir) -> Validity:
    """The current certificate's validity (blocking: reads files)."""
    data = state.read_identity() or {}
    before, after = data.get("cert_not_before"), data.get("cert_not_after")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        from registration import identity  # an older state dir: parse once, then keep

        before, after = identity.validity(identity.cert_from_pem(state.cert.read_bytes()))
        if data:
            state.write_identity({**data, "cert_not_before": before, "cert_not_after": after})
    return Validity(
        dt.datetime.fromtimestamp(before, dt.UTC), dt.datetime.fromtimestamp(after, dt.UTC)
    )


async def keep_renewed(
    state: StateDir, device_id: str, api: ApiClient, mqtt: MqttChannel | None
) -> None:
    """Renew the device certificate whenever it is due, forever. Failures are logged and
    retried with backoff; the agent carries on with the certificate it has."""
    backoff = Backoff(RETRY_BASE, RETRY_CAP)
    while True:
        try:
            current = await asyncio.to_thread(validity, state)
            wait = (current.renew_at - _now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_WAIT))
                continue
            serial = await renew(state, device_id, api)
        except (AgentError, OSError, ValueError) as e:
            delay = backoff.next()
            log.warning("certificate renewal failed: %s; retrying in %.0fs", e, delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        log.info("renewed the device certificate: serial %s", serial)
        if mqtt is not None:
            mqtt.reconnect("certificate renewed")


async def renew(state: StateDir, device_id: str, api: ApiClient) -> str:
    """One renewal, as steps. Returns the new serial."""
    # 1. A CSR for our key.
    csr = await asyncio.to_thread(_csr, state)
    # 2. Signed by the server, which we reach with the current certificate.
    answer = await api.renew_certificate(csr)
    # 3 and 4. Checked, then written atomically.
    await asyncio.to_thread(_keep, state, device_id, answer.certificate, answer.serial)
    # 5. Used from the next handshake on (the caller reconnects MQTT).
    await api.reload_certificate(state.cert, state.key)
    return answer.serial


def _csr(state: StateDir) -> str:
    from registration import identity  # cryptography: only when a renewal is due

    key = identity.key_from_pem(state.key.read_bytes())
    return identity.make_csr(key).decode()


def _keep(state: StateDir, device_id: str, pem: str, serial: str) -> None:
    """Check the new certificate and write it over the old one (blocking)."""
    from cryptography.exceptions import InvalidSignature

    from registration import identity

    try:
        cert = identity.cert_from_pem(pem.encode())
        ca = identity.cert_from_pem(state.ca.read_bytes())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise AgentError(f"the renewed certificate is not from the pinned CA: {e}") from e
    if identity.common_name(cert) != device_id:
        raise AgentError(f"the renewed certificate is for {identity.common_name(cert)!r}")
    if not identity.same_public_key(cert, identity.key_from_pem(state.key.read_bytes())):
        raise AgentError("the renewed certificate is not for this device's key")
    if str(cert.serial_number) != serial:
        raise AgentError(f"the renewed certificate's serial is not {serial}")
    state.write(state.cert, pem.encode())
    data = state.read_identity()
    if data is not None:
        before, after = identity.validity(cert)
        state.write_identity(
            {**data, "serial": serial, "cert_not_before": before, "cert_not_after": after}
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
