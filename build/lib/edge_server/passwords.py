"""Password and API-token secrets: scrypt for passwords; random API secrets are stored as
``registration.tokens.hash_secret``, like registration tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from edge_server.errors import Unauthorized
from registration.tokens import hash_secret

_N, _R, _P = 2**14, 8, 1
API_TOKEN_PREFIX = "crla"  # noqa: S105 - a prefix, not a secret


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(password: str, stored: str) -> bool:
    try:
        _, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=_N, r=_R, p=_P)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def new_api_token() -> tuple[str, str, str]:
    """Returns (token id, full token string, hash of the secret)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{API_TOKEN_PREFIX}.{token_id}.{secret}", hash_secret(secret)


def split_api_token(text: str) -> tuple[str, str]:
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != API_TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise Unauthorized("API token is malformed", code="invalid_api_token")
    return parts[1], parts[2]
