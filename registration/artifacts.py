"""Artifacts in the server's mirror, as a spec names them, and their signatures.

The server signs each artifact it imports with its **update-signing key** (ed25519, not
the CA); a device pins that key's public half at registration (``RegisterResponse``
``update_signing_key``) and verifies every artifact against it before using it. The
signature covers :func:`signing_message`: kind, name, version, arch, sha256 and size, so
a signed file cannot be passed off as another artifact, another version or another arch.

``cryptography`` is imported only when a signature is made or checked: an idle agent does
not load it.
"""

from __future__ import annotations

import base64
import re
from typing import Literal

from registration.document import Count, Document, Field, field_validator

#: ``base-iso`` is the node image's base ISO, from which the server streams seeded copies.
ArtifactKind = Literal["k3s-install", "k3s-binary", "k3s-images", "os-image", "file", "base-iso"]
#: The kind ``corral image import-base`` imports as.
BASE_ISO_KIND: ArtifactKind = "base-iso"
ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
SIGNATURE_DOMAIN = "corral-artifact-v1"
_NAME_RE = re.compile(ARTIFACT_NAME_PATTERN)
_SHA256_RE = re.compile(SHA256_PATTERN)


class ArtifactRef(Document):
    """What a spec carries for one artifact: where the device downloads it (a path under
    the API URL, fetched over mTLS with Range), and what it must verify."""

    id: str = Field(max_length=64)
    kind: ArtifactKind
    # Patterns are checked with Python's re (validators below), not pydantic-core's regex
    # engine, which costs every agent about a megabyte of RSS; the schema still states them.
    name: str = Field(max_length=128, json_schema_extra={"pattern": ARTIFACT_NAME_PATTERN})
    version: str = Field(max_length=128, json_schema_extra={"pattern": ARTIFACT_NAME_PATTERN})
    arch: str | None = Field(default=None, max_length=32)
    #: ``/api/v1/artifacts/<id>/content``
    url: str = Field(max_length=1024)
    sha256: str = Field(max_length=64, json_schema_extra={"pattern": SHA256_PATTERN})
    size: Count
    #: base64 of the ed25519 signature over :func:`signing_message`.
    signature: str = Field(max_length=128)

    @field_validator("name", "version")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid artifact name or version")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if not _SHA256_RE.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return v


def signing_message(
    kind: str, name: str, version: str, arch: str | None, sha256: str, size: int
) -> bytes:
    return "\n".join(
        [SIGNATURE_DOMAIN, kind, name, version, arch or "", sha256, str(size), ""]
    ).encode()


def ref_message(ref: ArtifactRef) -> bytes:
    return signing_message(ref.kind, ref.name, ref.version, ref.arch, ref.sha256, ref.size)


def sign(private_key_pem: bytes, message: bytes) -> str:
    """The base64 signature of ``message`` by the update-signing key (PEM, PKCS#8)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the update-signing key is not an ed25519 key")
    return base64.b64encode(key.sign(message)).decode()


def verify(public_key_b64: str, message: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is the pinned key's signature of ``message``. The public
    key is the raw 32 bytes, base64 (what ``update_signing_key`` carries)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_ref(public_key_b64: str, ref: ArtifactRef) -> bool:
    return verify(public_key_b64, ref_message(ref), ref.signature)
