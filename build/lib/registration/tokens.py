"""Registration token format: ``crl1.<ca-sha256-hex>.<token-id>.<secret>``.

Like K3s's ``K10<sha256>::`` tokens, the token pins the server's CA: a device trusts the
server only when the CA it is shown hashes to the fingerprint in the token. The server
keeps only :func:`hash_secret` of the secret, never the secret itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from registration.errors import TokenFormatError

PREFIX = "crl1"
_ID_RE = re.compile(r"[a-z0-9]{10}")
_FP_RE = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_TOKEN_LEN = 200


@dataclass(frozen=True)
class RegistrationToken:
    ca_fingerprint: str
    token_id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.ca_fingerprint}.{self.token_id}.{self.secret}"


def new_token_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(10))


def generate(ca_fingerprint: str, token_id: str | None = None) -> RegistrationToken:
    """A fresh token for the CA with this sha256 fingerprint (hex)."""
    if not _FP_RE.fullmatch(ca_fingerprint):
        raise TokenFormatError("CA fingerprint must be 64 lowercase hex characters")
    return RegistrationToken(
        ca_fingerprint=ca_fingerprint,
        token_id=token_id or new_token_id(),
        secret=secrets.token_urlsafe(32),
    )


def parse(text: object) -> RegistrationToken:
    """Parse a token string, raising :class:`TokenFormatError` with the reason."""
    if not isinstance(text, str):
        raise TokenFormatError("token must be a string")
    if len(text) > MAX_TOKEN_LEN:
        raise TokenFormatError("token is too long")
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenFormatError(f"token must look like {PREFIX}.<ca-sha256>.<id>.<secret>")
    _, fingerprint, token_id, secret = parts
    if not _FP_RE.fullmatch(fingerprint):
        raise TokenFormatError("token's CA fingerprint is not 64 lowercase hex characters")
    if not _ID_RE.fullmatch(token_id):
        raise TokenFormatError("token id is not 10 characters of [a-z0-9]")
    if not _SECRET_RE.fullmatch(secret):
        raise TokenFormatError("token secret is not 43 characters of base64url")
    return RegistrationToken(fingerprint, token_id, secret)


def hash_secret(secret: str) -> str:
    """The stored form of a secret. Secrets carry 256 random bits, so a plain hash suffices."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
