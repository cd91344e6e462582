"""Who is calling: operators by API token, devices by client certificate (mTLS).

Handlers opt in with ``@operator("viewer" | "operator" | "admin")`` or ``@device``.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509

from edge_server import passwords
from edge_server.errors import Forbidden, Unauthorized
from edge_server.keys import STORE
from edge_server.ops.changes import Actor
from edge_server.store import devices as devices_store
from edge_server.store import users as users_store
from registration.identity import common_name
from registration.tokens import secret_matches

ROLES = {"viewer": 0, "operator": 1, "admin": 2}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operator:
    username: str
    role: str
    token_id: str


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    serial: int


OPERATOR_KEY = web.RequestKey("operator", Operator)
DEVICE_KEY = web.RequestKey("device", DeviceIdentity)


async def authenticate_operator(request: web.Request) -> Operator:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send Authorization: Bearer <API token>", code="missing_api_token")
    token_id, secret = passwords.split_api_token(token.strip())
    row = await request.app[STORE].read(lambda db: users_store.api_token_with_user(db, token_id))
    if row is None or not secret_matches(secret, row["secret_hash"]):
        raise Unauthorized("API token is not valid", code="invalid_api_token")
    if row["revoked_at"] is not None:
        raise Unauthorized("API token has been revoked", code="revoked_api_token")
    return Operator(row["username"], row["role"], row["id"])


def operator(role: str) -> Callable[[Handler], Handler]:
    needed = ROLES[role]

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            who = await authenticate_operator(request)
            if ROLES[who.role] < needed:
                raise Forbidden(f"role {who.role} may not do this; needs {role}")
            request[OPERATOR_KEY] = who
            return await handler(request)

        return checked

    return wrap


def current_operator(request: web.Request) -> Operator:
    return request[OPERATOR_KEY]


def current_actor(request: web.Request) -> Actor:
    """The operator behind this request, as operations record it."""
    return Actor(request[OPERATOR_KEY].username)


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport else None
    if not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = sslobj.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


async def authenticate_device(request: web.Request, *, own_path: bool = True) -> DeviceIdentity:
    """The device behind the client certificate. TLS already checked that the Corral CA
    signed it and that it has not expired; here we check the deny-list and, with
    ``own_path``, that the path's ``{device_id}`` is the device's own."""
    cert = peer_certificate(request)
    if cert is None:
        raise Unauthorized(
            "this endpoint needs the device's client certificate", code="no_client_cert"
        )
    device_id = common_name(cert) or ""
    serial = cert.serial_number
    row = await request.app[STORE].read(lambda db: devices_store.certificate(db, serial))
    if row is None or row["revoked_at"] is not None or row["device_id"] != device_id:
        raise Forbidden("this certificate has been revoked", code="certificate_revoked")
    if own_path and request.match_info.get("device_id") != device_id:
        raise Forbidden("a device may only act as itself", code="wrong_device")
    return DeviceIdentity(device_id, serial)


def device(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        request[DEVICE_KEY] = await authenticate_device(request)
        return await handler(request)

    return checked


def current_device(request: web.Request) -> DeviceIdentity:
    return request[DEVICE_KEY]
