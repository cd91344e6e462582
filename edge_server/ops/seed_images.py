"""Seed ISOs per token: the newest imported base ISO with a token's seed in its seed slot.

``GET /api/v1/tokens/{id}/seed.iso`` streams it (``api.seed_images``); nothing is stored
per token. The token is rebuilt from its sealed secret (``edge_server.sealing``); a token
made before secrets were sealed, or one that can no longer register a device (revoked,
expired, used up), gets no seed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_server import mirror
from edge_server.errors import BadRequest, Conflict, Gone, NotFound, ServerError
from edge_server.sealing import TokenSealer
from edge_server.store import Store
from edge_server.store import artifacts as artifacts_store
from edge_server.store import tokens as tokens_store
from node_image.image.seedslot import SeedSlotError, render
from registration import seed as seed_doc
from registration import tokens
from registration.artifacts import BASE_ISO_KIND


@dataclass(frozen=True)
class BaseImage:
    """The base ISO a seed ISO is made from: its file, size, sha256 and slot offset."""

    artifact_id: str
    path: Path
    size: int
    sha256: str
    slot_offset: int


@dataclass(frozen=True)
class SeedImage:
    base: BaseImage
    seed: seed_doc.Seed
    #: The slot's bytes: the seed's JSON padded with spaces.
    slot: bytes

    @property
    def filename(self) -> str:
        return f"corral-seed-{self.seed.token.token_id}.iso"

    @property
    def etag(self) -> str:
        """Changes with the base ISO and with the seed."""
        return '"' + hashlib.sha256(self.base.sha256.encode() + self.slot).hexdigest() + '"'


async def newest_base(store: Store, directory: Path) -> BaseImage:
    row = await store.read(lambda db: artifacts_store.newest_with_seed_slot(db, BASE_ISO_KIND))
    if row is None:
        raise Conflict(
            "no base ISO has been imported; import one with 'corral image import-base "
            "BASE.iso' (build it with 'corral image build-base')",
            code="no_base_image",
        )
    return BaseImage(
        artifact_id=str(row["id"]),
        path=mirror.path_of(directory, str(row["sha256"])),
        size=int(row["size"]),
        sha256=str(row["sha256"]),
        slot_offset=int(row["seed_slot_offset"]),
    )


def _usable(row: dict[str, Any] | None, token_id: str) -> dict[str, Any]:
    """The token's row, if it can still register a device and its secret was sealed."""
    if row is None:
        raise NotFound(f"no registration token {token_id}")
    if row["revoked_at"] is not None:
        raise Gone(f"token {token_id} is revoked; create a new token", code="token_revoked")
    expires = row["expires_at"]
    if expires is not None and float(expires) <= time.time():
        raise Gone(f"token {token_id} has expired; create a new token", code="token_expired")
    if row["max_uses"] is not None and int(row["uses"]) >= int(row["max_uses"]):
        raise Gone(f"token {token_id} has no uses left; create a new token", code="token_exhausted")
    if not row.get("secret_sealed"):
        raise Conflict(
            f"token {token_id} was created before the server kept sealed secrets, so its "
            "seed cannot be rebuilt; create a new token, or seed locally with "
            "'corral image seed --token …'",
            code="token_not_sealed",
        )
    return row


async def seed_image(
    store: Store,
    sealer: TokenSealer,
    directory: Path,
    ca_fingerprint: str,
    token_id: str,
    document: dict[str, Any],
) -> SeedImage:
    """The seed ISO for ``token_id``: ``document`` is the seed without its token (server,
    labels, hostname_template, install_disk, network), checked by ``registration.seed``."""
    row = _usable(await store.read(lambda db: tokens_store.get_with_secret(db, token_id)), token_id)
    secret = sealer.open(token_id, str(row["secret_sealed"]))
    if not tokens.secret_matches(secret, str(row["secret_hash"])):
        raise ServerError(f"token {token_id}: its sealed secret does not match its hash")
    token = tokens.RegistrationToken(ca_fingerprint, token_id, secret)
    try:
        seed = seed_doc.from_dict({**document, "token": str(token)})
        slot = render(seed)
    except (seed_doc.SeedError, SeedSlotError) as e:
        raise BadRequest(str(e), code="bad_seed") from e
    base = await newest_base(store, directory)
    return SeedImage(base=base, seed=seed, slot=slot)
