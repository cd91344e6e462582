"""Spec resolution from the mirror (``edge_server.artifact_refs``), on a real SQLite file
through the real store and ``specs.recompute``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from edge_server import specs
from edge_server.artifact_refs import release_arch
from edge_server.store import artifacts as artifacts_store
from edge_server.store import connect
from edge_server.store import groups as groups_store
from edge_server.store import state as state_store
from edge_server.store.migrations import migrate
from registration.desired import K3sSpec, OsSpec, SpecPatch
from tests.edge_server.test_specs import add_device


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = connect(tmp_path / "c.db")
    migrate(database)
    return database


def add_artifact(db: Database, artifact_id: str, kind: str, version: str, arch: str | None) -> None:
    artifacts_store.create(
        db,
        artifact_id=artifact_id,
        kind=kind,
        name=artifact_id,
        version=version,
        arch=arch,
        sha256="a" * 64,
        size=1,
        signature="c2ln",
        created_by="test",
    )
    time.sleep(0.002)  # distinct created_at: the newest import wins


def spec(db: Database, device_id: str) -> dict[str, Any]:
    row = state_store.get(db, device_id)
    assert row is not None
    data: dict[str, Any] = row["spec"]
    return data


def ids(part: dict[str, Any], *names: str) -> list[str | None]:
    return [(part[n] or {}).get("id") for n in names]


def test_machine_names_map_to_release_arches() -> None:
    assert release_arch("x86_64") == "amd64"
    assert release_arch("aarch64") == "arm64"
    assert release_arch("armv7l") == "arm"
    assert release_arch("") is None


def test_each_device_gets_its_arch_and_the_newest_import_and_nothing_when_missing(
    db: Database,
) -> None:
    add_device(db, "x86", {}, {"arch": "x86_64"})
    add_device(db, "pi", {}, {"arch": "aarch64"})
    add_device(db, "unknown", {}, {"arch": ""})
    groups_store.create(db, "all", "", 0)
    patch = SpecPatch(os=OsSpec(version="2"), k3s=K3sSpec(version="v1"))
    groups_store.update(db, "all", spec=patch.model_dump(exclude_none=True))
    specs.recompute(db)
    assert spec(db, "x86")["os"]["image"] is None

    add_artifact(db, "os-any", "os-image", "2", None)
    add_artifact(db, "os-arm", "os-image", "2", "arm64")
    add_artifact(db, "os-other-version", "os-image", "3", None)
    add_artifact(db, "script", "k3s-install", "v1", None)
    add_artifact(db, "bin-amd", "k3s-binary", "v1", "amd64")
    add_artifact(db, "bin-arm-old", "k3s-binary", "v1-old", "arm64")
    add_artifact(db, "img-amd", "k3s-images", "v1", "amd64")
    changed = {c.device_id for c in specs.recompute(db)}
    assert changed == {"x86", "pi", "unknown"}

    x86, pi, unknown = spec(db, "x86"), spec(db, "pi"), spec(db, "unknown")
    assert x86["os"]["image"]["id"] == "os-any"
    assert pi["os"]["image"]["id"] == "os-arm"  # the exact arch beats every-arch
    assert unknown["os"]["image"]["id"] == "os-any"
    k3s = ("install_script", "binary", "images")
    assert ids(x86["k3s"], *k3s) == ["script", "bin-amd", "img-amd"]
    assert ids(pi["k3s"], *k3s) == ["script", None, None]  # nothing for arm64 at v1
    assert ids(unknown["k3s"], *k3s) == ["script", None, None]
    assert x86["os"]["image"]["url"] == "/api/v1/artifacts/os-any/content"

    # A newer import of the same version and arch wins; nothing changes for the others.
    add_artifact(db, "os-any-2", "os-image", "2", None)
    changed = {c.device_id for c in specs.recompute(db)}
    assert changed == {"x86", "unknown"}
    assert spec(db, "x86")["os"]["image"]["id"] == "os-any-2"
    assert spec(db, "pi")["os"]["image"]["id"] == "os-arm"


def test_a_patch_setting_a_server_resolved_field_is_refused() -> None:
    ref = {"id": "x", "kind": "os-image", "name": "os", "version": "1", "url": "/u",
           "sha256": "a" * 64, "size": 1, "signature": "c2ln"}  # fmt: skip
    for data in (
        {"os": {"version": "1", "image": ref}},
        {"k3s": {"binary": {**ref, "kind": "k3s-binary"}}},
        {"k3s": {"token": "t"}},
        {"k3s": {"server_url": "https://x:6443"}},
    ):
        with pytest.raises(ValueError, match="filled by the server"):
            SpecPatch.model_validate(data)
    assert SpecPatch.model_validate({"os": {"version": "1", "allow_downgrade": True}}).os
