"""Specs name artifacts from the mirror: the server fills the references, operators set
only versions.

When a spec is computed (``specs.recompute``, inside a writer job), the merged spec's
versions are resolved against the ``artifacts`` table:

- ``os.image``: kind ``os-image`` (any name) with ``version == os.version``, for the
  device's architecture or for every architecture;
- ``k3s.install_script``: kind ``k3s-install`` with ``version == k3s.version``;
- ``k3s.binary`` / ``k3s.images``: kinds ``k3s-binary`` / ``k3s-images`` with that version,
  for the device's architecture (``facts.arch``: ``x86_64`` → ``amd64``, ``aarch64`` →
  ``arm64``, ``armv7l`` → ``arm``).

An artifact for the exact architecture beats one for every architecture; among equals the
newest import wins. A version with nothing in the mirror leaves the reference empty (the
device's reconciler reports that it waits for it); importing the artifact later fills it
and nudges the device, deleting it empties it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edge_server.store import artifacts as artifacts_store
from registration.artifacts import ArtifactRef
from registration.desired import Spec

#: ``uname -m`` (``platform.machine()``, what ``facts.arch`` holds) → K3s's release arch.
ARCH_ALIASES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armhf": "arm",
    "arm": "arm",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

RESOLVED_KINDS = ("os-image", "k3s-install", "k3s-binary", "k3s-images")


def release_arch(machine: str | None) -> str | None:
    """The release architecture for a device's ``facts.arch``; None when unknown."""
    if not machine:
        return None
    return ARCH_ALIASES.get(machine.lower(), machine.lower())


def content_url(artifact_id: str) -> str:
    """Where a device downloads an artifact: a path under the API URL (mTLS, Range)."""
    return f"/api/v1/artifacts/{artifact_id}/content"


def ref_of(row: dict[str, Any]) -> ArtifactRef:
    """The reference a spec carries for this artifact row."""
    return ArtifactRef(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        version=row["version"],
        arch=row["arch"] or None,
        url=content_url(row["id"]),
        sha256=row["sha256"],
        size=row["size"],
        signature=row["signature"],
    )


@dataclass(frozen=True)
class Resolver:
    """The mirror's resolvable artifacts and the devices' architectures, read once per
    recomputation."""

    #: (kind, version, arch or "") → the newest row
    newest: dict[tuple[str, str, str], dict[str, Any]]
    arches: dict[str, str | None]

    @classmethod
    def load(cls, db: Database, device_ids: Iterable[str] | None) -> Resolver:
        newest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in artifacts_store.for_versions(db, RESOLVED_KINDS):  # oldest first
            newest[(row["kind"], row["version"], row["arch"] or "")] = row
        arches = {
            device_id: release_arch(machine)
            for device_id, machine in artifacts_store.device_arches(db, device_ids).items()
        }
        return cls(newest, arches)

    def _find(
        self, kind: str, version: str | None, arch: str | None, any_arch: bool
    ) -> ArtifactRef | None:
        if version is None:
            return None
        row = self.newest.get((kind, version, arch or "")) if arch else None
        if row is None and any_arch:
            row = self.newest.get((kind, version, ""))
        return ref_of(row) if row is not None else None

    def resolve(self, device_id: str, spec: Spec) -> Spec:
        """``spec`` with its artifact references filled from the mirror."""
        if spec.os.version is None and spec.k3s.version is None:
            return spec
        arch = self.arches.get(device_id)
        os_version, k3s_version = spec.os.version, spec.k3s.version
        os = spec.os.model_copy(
            update={"image": self._find("os-image", os_version, arch, any_arch=True)}
        )
        k3s = spec.k3s.model_copy(
            update={
                "install_script": self._find("k3s-install", k3s_version, arch, any_arch=True),
                "binary": self._find("k3s-binary", k3s_version, arch, any_arch=False),
                "images": self._find("k3s-images", k3s_version, arch, any_arch=False),
            }
        )
        return spec.model_copy(update={"os": os, "k3s": k3s})
