"""Registration as an operation: :mod:`edge_server.registrar` does the work in one writer
job; this says what the commit changed."""

from __future__ import annotations

import datetime as dt

from edge_server import registrar
from edge_server.ops.changes import Changes, Done, Event
from edge_server.store import Store
from registration import identity
from registration.protocol import RegisterRequest, RegisterResponse


async def register(
    store: Store,
    ca: identity.CertificateAuthority,
    doc: RegisterRequest,
    api_url: str,
    mqtt_url: str | None = None,
    cert_lifetime: dt.timedelta = identity.DEVICE_CERT_LIFETIME,
    update_signing_key: str | None = None,
) -> Done[RegisterResponse]:
    """The actor is the token (``token:<id>``), written to the audit log by the registrar."""
    checked = registrar.check_request(doc, ca.fingerprint)
    nudges, answer = await store.write(
        lambda db: registrar.commit(db, ca, checked, api_url, mqtt_url, cert_lifetime)
    )
    answer = answer.model_copy(update={"update_signing_key": update_signing_key})
    actor = f"token:{checked.token.token_id}"
    kind = "device.register" if answer.created else "device.reregister"
    # A new device gets no nudge: its agent pulls its spec right after this answer, and
    # publishing would cost every registration a broker round. A known device may hold a
    # retained nudge from before (a reset resets its acked seq), so it gets a fresh one.
    return Done(
        answer,
        Changes.of(Event(kind, answer.device_id, actor), nudges=() if answer.created else nudges),
    )
