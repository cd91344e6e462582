"""Typed application state keys (aiohttp ``web.AppKey``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from edge_server.channel import Channel
from edge_server.mirror import Served
from edge_server.ratelimit import FailureLimiter
from edge_server.sealing import TokenSealer
from edge_server.sessions import SessionControl
from edge_server.settings import Settings
from edge_server.signing import UpdateSigner
from edge_server.store import Store
from registration.identity import CertificateAuthority

if TYPE_CHECKING:  # the notifier reads the keys above
    from edge_server.notifier import Notifier

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CA = web.AppKey("ca", CertificateAuthority)
CA_PEM = web.AppKey("ca_pem", str)
REGISTER_LIMITER = web.AppKey("register_limiter", FailureLimiter)
CHANNEL = web.AppKey("channel", Channel)
SESSIONS = web.AppKey("sessions", SessionControl)
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
UPDATE_SIGNER = web.AppKey("update_signer", UpdateSigner)
ARTIFACTS_SERVED = web.AppKey("artifacts_served", Served)
TOKEN_SEALER = web.AppKey("token_sealer", TokenSealer)
