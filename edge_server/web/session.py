"""Dashboard sessions: sign-in with the operator's password, a session cookie, CSRF tokens.

Sessions live in memory (a restart signs everyone out). The cookie is ``Secure``,
``HttpOnly`` and ``SameSite=Strict``; every POST carries the session's CSRF token in a
hidden ``csrf`` field, compared in constant time. Failed sign-ins are limited per address
and per account (``edge_server.ratelimit.FailureLimiter``).
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from edge_server.errors import Forbidden, TooManyRequests
from edge_server.ops.changes import Actor
from edge_server.ratelimit import FailureLimiter

COOKIE = "corral_session"
PRE_COOKIE = "corral_signin"  # the sign-in form's CSRF token, before there is a session
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 10_000
FAILURES_PER_MINUTE = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    username: str
    role: str
    id: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.time() + LIFETIME)

    @property
    def actor(self) -> Actor:
        return Actor(self.username)


class Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self.by_address = FailureLimiter(FAILURES_PER_MINUTE)
        self.by_account = FailureLimiter(FAILURES_PER_MINUTE)

    def create(self, username: str, role: str) -> Session:
        now = time.time()
        if len(self._by_id) >= MAX_SESSIONS:
            for sid in [s for s, v in self._by_id.items() if v.expires < now]:
                del self._by_id[sid]
            while len(self._by_id) >= MAX_SESSIONS:  # the oldest go first
                del self._by_id[next(iter(self._by_id))]
        session = Session(username, role)
        self._by_id[session.id] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid) if sid else None
        if session is None or session.expires < time.time():
            return None
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def check_allowed(self, address: str, username: str) -> None:
        """Raises ``TooManyRequests`` while either the address or the account is limited."""
        try:
            self.by_address.check(address)
            self.by_account.check("user:" + username)
        except TooManyRequests as e:
            raise TooManyRequests(
                "too many failed sign-ins; wait a minute and try again", code="rate_limited"
            ) from e

    def failed(self, address: str, username: str) -> None:
        self.by_address.record_failure(address)
        self.by_account.record_failure("user:" + username)


SESSIONS = web.AppKey("web_sessions", Sessions)
SESSION_KEY = web.RequestKey("web_session", Session)


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict"
    )


def current(request: web.Request) -> Session:
    return request[SESSION_KEY]


def signed_in(request: web.Request) -> Session | None:
    return request.app[SESSIONS].get(request.cookies.get(COOKIE))


def check_csrf(expected: str, sent: object) -> None:
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(expected, sent):
        raise Forbidden(
            "the form's security token is missing or stale; reload the page and try again",
            code="csrf_failed",
        )


def page(handler: Handler) -> Handler:
    """A dashboard page or action: needs a session (else: to the sign-in page), and on a
    POST the session's CSRF token (else: 403, nothing done)."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        session = signed_in(request)
        if session is None:
            target = request.path_qs if request.method == "GET" else "/"
            raise web.HTTPSeeOther("/signin?next=" + quote(target, safe=""))
        if request.method == "POST":
            form = await request.post()
            check_csrf(session.csrf, form.get("csrf"))
        request[SESSION_KEY] = session
        return await handler(request)

    return checked
