"""The artifact mirror: import (a streamed upload, signed), list, show, delete.

An import records size, sha256 and the update-signing key's ed25519 signature over
``registration.artifacts.signing_message``, names the file by its sha256, and recomputes
every device's spec in the same writer job (specs resolve artifacts by version:
``edge_server.artifact_refs``), so the devices whose spec now names it are nudged. A delete
does the same the other way. Identical bytes imported twice share one file; the file goes
when its last row does.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from edge_server import mirror, specs
from edge_server.artifact_refs import ref_of
from edge_server.errors import BadRequest, Conflict, NotFound
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.ops.rows import Row
from edge_server.signing import UpdateSigner
from edge_server.store import Store
from edge_server.store import artifacts as artifacts_store
from edge_server.store.rows import audit
from node_image.image import seedslot
from registration import document as doc
from registration.artifacts import (
    ARTIFACT_NAME_PATTERN,
    BASE_ISO_KIND,
    SHA256_PATTERN,
    ArtifactKind,
    ArtifactRef,
    signing_message,
)
from registration.document import Document

ARCH_PATTERN = r"^[a-z0-9][a-z0-9_]{0,31}$"


class ArtifactImport(Document):
    """What an import says about the file it uploads (query parameters)."""

    kind: ArtifactKind
    name: str = doc.Field(pattern=ARTIFACT_NAME_PATTERN)
    version: str = doc.Field(pattern=ARTIFACT_NAME_PATTERN)
    arch: str | None = doc.Field(default=None, pattern=ARCH_PATTERN)
    #: When given, the upload must hash to it (lower-case hex).
    sha256: str | None = doc.Field(default=None, pattern=SHA256_PATTERN)


class ArtifactRow(Row):
    id: str
    kind: str
    name: str
    version: str
    arch: str | None
    sha256: str
    size: int
    signature: str
    created_at: float
    created_by: str

    def ref(self) -> ArtifactRef:
        return ref_of(self.model_dump())


class ArtifactList(Row):
    items: list[ArtifactRow]


class ArtifactImported(ArtifactRow):
    devices_changed: int


class ArtifactDeleted(Row):
    id: str
    status: Literal["deleted"]
    devices_changed: int


def _taken(meta: ArtifactImport) -> Conflict:
    arch = f" ({meta.arch})" if meta.arch else ""
    return Conflict(
        f"{meta.kind} {meta.name} {meta.version}{arch} is already in the mirror; delete it "
        "first to replace it",
        code="artifact_exists",
    )


async def check_new(store: Store, meta: ArtifactImport) -> None:
    """Refuse a duplicate before the upload is read (the import checks again)."""
    found = await store.read(
        lambda db: artifacts_store.find(db, meta.kind, meta.name, meta.version, meta.arch)
    )
    if found is not None:
        raise _taken(meta)


async def import_(
    store: Store,
    actor: Actor,
    signer: UpdateSigner,
    directory: Path,
    meta: ArtifactImport,
    received: mirror.Received,
) -> Done[ArtifactImported]:
    """Sign the received file, name it by its sha256, record it, recompute the specs.
    A base ISO must have a seed slot; its offset is recorded (``ops.seed_images``)."""
    slot_offset = await _seed_slot(meta, received)
    signature = signer.sign(
        signing_message(
            meta.kind, meta.name, meta.version, meta.arch, received.sha256, received.size
        )
    )
    artifact_id = "art-" + secrets.token_hex(6)

    def job(db: Database) -> tuple[dict[str, Any], list[specs.Change]]:
        if artifacts_store.find(db, meta.kind, meta.name, meta.version, meta.arch) is not None:
            raise _taken(meta)
        what: dict[str, Any] = {
            "kind": meta.kind,
            "name": meta.name,
            "version": meta.version,
            "arch": meta.arch,
            "sha256": received.sha256,
            "size": received.size,
        }
        artifacts_store.create(
            db,
            artifact_id=artifact_id,
            signature=signature,
            created_by=actor.name,
            seed_slot_offset=slot_offset,
            **what,
        )
        mirror.place(directory, received)
        audit(db, actor.name, "artifact.import", artifact_id, **what)
        row = artifacts_store.get(db, artifact_id)
        assert row is not None  # noqa: S101 - read inside the job that wrote it
        return row, specs.recompute(db)

    try:
        row, nudges = await store.write(job)
    except Exception:
        await store.write(lambda db: _forget(db, directory, received))
        raise
    value = ArtifactImported.model_validate({**row, "devices_changed": len(nudges)})
    return Done(value, Changes.of(Event("artifact.import", artifact_id, actor.name), nudges=nudges))


async def _seed_slot(meta: ArtifactImport, received: mirror.Received) -> int | None:
    """The seed slot's offset in a base ISO (None for other kinds); a base ISO without one
    is refused and its upload removed."""
    if meta.kind != BASE_ISO_KIND:
        return None
    try:
        offset, _ = await asyncio.to_thread(seedslot.find_slot, received.tmp)
    except seedslot.SeedSlotError as e:
        await asyncio.to_thread(received.tmp.unlink, missing_ok=True)
        raise BadRequest(
            f"{meta.name} is not a base ISO with a seed slot ({e}); nothing was stored. "
            "Build one with 'corral image build-base'",
            code="no_seed_slot",
        ) from e
    return offset


def _forget(db: Database, directory: Path, received: mirror.Received) -> None:
    """After a failed import: the temp file goes, and the named file too unless a row
    (committed by another import) holds the same bytes."""
    received.tmp.unlink(missing_ok=True)
    if not artifacts_store.sha256_in_use(db, received.sha256):
        mirror.remove(directory, received.sha256)


async def delete(
    store: Store, actor: Actor, directory: Path, artifact_id: str
) -> Done[ArtifactDeleted]:
    def job(db: Database) -> tuple[str, list[specs.Change]]:
        row = artifacts_store.get(db, artifact_id)
        if row is None or not artifacts_store.delete(db, artifact_id):
            raise NotFound(f"no artifact {artifact_id}")
        audit(db, actor.name, "artifact.delete", artifact_id, sha256=row["sha256"])
        return str(row["sha256"]), specs.recompute(db)

    sha256, nudges = await store.write(job)

    def drop_file(db: Database) -> None:
        # After the commit, in the writer (so no import of the same bytes runs meanwhile).
        if not artifacts_store.sha256_in_use(db, sha256):
            mirror.remove(directory, sha256)

    await store.write(drop_file)
    value = ArtifactDeleted(id=artifact_id, status="deleted", devices_changed=len(nudges))
    return Done(value, Changes.of(Event("artifact.delete", artifact_id, actor.name), nudges=nudges))


async def list_all(store: Store, kind: str | None = None) -> ArtifactList:
    rows = await store.read(lambda db: artifacts_store.list_all(db, kind))
    return ArtifactList(items=[ArtifactRow.model_validate(r) for r in rows])


async def show(store: Store, artifact_id: str) -> ArtifactRow:
    row = await store.read(lambda db: artifacts_store.get(db, artifact_id))
    if row is None:
        raise NotFound(f"no artifact {artifact_id}")
    return ArtifactRow.model_validate(row)
