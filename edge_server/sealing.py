"""Registration-token secrets, sealed so the server can hand out a token's seed later.

The server checks a token against ``hash_secret`` only (``registration.tokens``). To stream a
seeded ISO for a token after it was created (``GET /api/v1/tokens/{id}/seed.iso``), it also
keeps the secret sealed with AES-256-GCM under a key of its own: ``<data>/pki/token-seal.key``
(32 random bytes, 0600, created at first start). The token id is the associated data, so a
sealed secret cannot be moved to another token's row. A database copied without the key file
gives up no secret.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_server.errors import ServerError
from edge_server.pki import write_private

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
#: Sealed secrets start with this, so another format can follow.
PREFIX = "v1:"


class SealError(ServerError):
    code = "sealed_secret_unreadable"


@dataclass(frozen=True)
class TokenSealer:
    key: bytes

    def seal(self, token_id: str, secret: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, secret.encode(), token_id.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, token_id: str, sealed: str) -> str:
        if not sealed.startswith(PREFIX):
            raise SealError(f"token {token_id}: its sealed secret has an unknown format")
        try:
            raw = base64.b64decode(sealed[len(PREFIX) :], validate=True)
            plain = AESGCM(self.key).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], token_id.encode()
            )
        except (ValueError, InvalidTag) as e:
            raise SealError(
                f"token {token_id}: its sealed secret does not open with this server's key "
                "(was token-seal.key replaced?); create a new token"
            ) from e
        return plain.decode()

    @classmethod
    def load(cls, path: Path) -> TokenSealer:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ServerError(f"{path} is not a {KEY_BYTES}-byte key", code="bad_seal_key")
        return cls(key)


def ensure(path: Path) -> TokenSealer:
    """Load the key, creating it on first start. Blocking (runs before the loop)."""
    if not path.exists():
        write_private(path, os.urandom(KEY_BYTES))
        log.info("created the token-sealing key %s", path)
    return TokenSealer.load(path)
