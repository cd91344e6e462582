"""The server's update-signing key: ed25519, separate from the CA.

Created at first start (:func:`ensure`, from ``bootstrap``) as ``<data>/pki/update-signing.key``
(0600, PKCS#8 PEM). The server signs every artifact it imports with it
(``registration.artifacts.signing_message``); devices receive its public half at registration
(``RegisterResponse.update_signing_key``) and verify artifacts against it.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_server.errors import ServerError
from edge_server.pki import write_private
from registration import artifacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateSigner:
    """The private key (PEM) and its public half (raw 32 bytes, base64)."""

    private_pem: bytes
    public_key: str

    def sign(self, message: bytes) -> str:
        return artifacts.sign(self.private_pem, message)

    @classmethod
    def load(cls, path: Path) -> UpdateSigner:
        pem = path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ServerError(f"{path} is not an ed25519 key", code="bad_signing_key")
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(pem, base64.b64encode(raw).decode())


def ensure(path: Path) -> UpdateSigner:
    """Load the key, creating it on first start. Blocking (runs before the loop)."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
        log.info("created the update-signing key %s", path)
    return UpdateSigner.load(path)
