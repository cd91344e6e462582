"""Sign in and sign out."""

from __future__ import annotations

import secrets

from aiohttp import web

from edge_server.errors import TooManyRequests, Unauthorized
from edge_server.keys import STORE
from edge_server.ops import users as user_ops
from edge_server.web.render import render
from edge_server.web.session import (
    COOKIE,
    LIFETIME,
    PRE_COOKIE,
    SESSIONS,
    check_csrf,
    page,
    set_cookie,
    signed_in,
)

routes = web.RouteTableDef()


def _next(request: web.Request, value: object) -> str:
    """Where to go after signing in: a path on this site only."""
    target = value if isinstance(value, str) else ""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _form(
    request: web.Request, error: str = "", username: str = "", status: int = 200
) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "signin.html",
        {
            "title": "Sign in",
            "csrf": token,
            "error": error,
            "username": username,
            "next": _next(request, request.query.get("next")),
        },
        status=status,
    )
    set_cookie(response, PRE_COOKIE, token, 3600)
    return response


@routes.get("/signin")
async def signin_form(request: web.Request) -> web.StreamResponse:
    if signed_in(request) is not None:
        raise web.HTTPSeeOther(_next(request, request.query.get("next")))
    return _form(request)


@routes.post("/signin")
async def signin(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    check_csrf(request.cookies.get(PRE_COOKIE, ""), form.get("csrf"))
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    sessions = request.app[SESSIONS]
    address = request.remote or "unknown"
    try:
        sessions.check_allowed(address, username)
        user = await user_ops.sign_in(request.app[STORE], username, password)
    except TooManyRequests as e:
        return _form(request, e.detail, username, status=429)
    except Unauthorized as e:
        sessions.failed(address, username)
        return _form(request, e.detail, username, status=401)
    session = sessions.create(user.username, user.role)
    response = web.HTTPSeeOther(_next(request, form.get("next")))
    set_cookie(response, COOKIE, session.id, int(LIFETIME))
    response.del_cookie(PRE_COOKIE, path="/")
    raise response


@routes.post("/signout")
@page
async def signout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/signin")
    response.del_cookie(COOKIE, path="/")
    raise response
