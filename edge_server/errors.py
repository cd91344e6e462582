"""The server's one base exception and its HTTP-shaped children.

The error middleware (``edge_server.api.middleware``) turns each into
``{"error": code, "detail": text}`` with ``status``.
"""

from __future__ import annotations


class ServerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(ServerError):
    status = 400
    code = "bad_request"


class Unauthorized(ServerError):
    status = 401
    code = "unauthorized"


class Forbidden(ServerError):
    status = 403
    code = "forbidden"


class NotFound(ServerError):
    status = 404
    code = "not_found"


class Conflict(ServerError):
    status = 409
    code = "conflict"


class Gone(ServerError):
    status = 410
    code = "gone"


class PayloadTooLarge(ServerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServerError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ServerError):
    status = 429
    code = "too_many_requests"


class StorageFull(ServerError):
    """The disk under the data dir is full: the write was refused whole, nothing of it kept.
    507 Insufficient Storage (RFC 4918); the server recovers by itself once space is freed."""

    status = 507
    code = "storage_full"
