"""One middleware maps every error to ``{"error": code, "detail": text}`` with its status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from edge_server.api.http import json_response
from edge_server.errors import ServerError
from registration.errors import RegistrationError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# RFC 9110 §11.6.1: a 401 carries a challenge. Operators authenticate with a Bearer API token.
CHALLENGE = 'Bearer realm="corral"'
# Headers of aiohttp's own HTTP errors that describe the body, not the error: the JSON body
# replaces them. The others (``Allow`` on a 405, for example) are kept.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


def error_body(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = json_response({"error": code, "detail": detail}, status=status)
    if headers:
        response.headers.update(headers)
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", CHALLENGE)
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServerError as e:
        return error_body(e.status, e.code, e.detail)
    except RegistrationError as e:
        return error_body(400, e.code, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, f"http_{e.status}")
        kept = {k: v for k, v in e.headers.items() if k.lower() not in _BODY_HEADERS}
        return error_body(e.status, code, e.reason, kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_body(500, "internal_error", "internal server error; see the server log")
