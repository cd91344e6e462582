"""Each device's spec: the groups that select it, in precedence order, then its override.

Groups apply lowest precedence first (priority ascending, then name), so a higher priority
wins. Within ``os`` and ``k3s`` each field is merged on its own; bundles merge by name and
config files by path. A device's **generation** rises when, and only when, its computed
spec changes.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edge_server import artifact_refs, bundles, k3s_cluster, selectors
from edge_server.store import groups as groups_store
from edge_server.store import state as state_store
from registration.desired import K3sSpec, OsSpec, Spec, SpecPatch


@dataclass(frozen=True)
class Change:
    device_id: str
    generation: int
    acked_seq: int


@dataclass(frozen=True)
class Layer:
    name: str
    selector: selectors.Selector
    patch: SpecPatch


def merge(patches: Iterable[SpecPatch]) -> Spec:
    os_fields: dict[str, Any] = {}
    k3s_fields: dict[str, Any] = {}
    bundles: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for patch in patches:
        if patch.os is not None:
            os_fields.update(patch.os.model_dump(exclude_none=True))
        if patch.k3s is not None:
            k3s_fields.update(patch.k3s.model_dump(exclude_none=True))
        for bundle in patch.bundles or []:
            bundles[bundle.name] = bundle
        for file in patch.config or []:
            config[file.path] = file
    return Spec(
        os=OsSpec(**os_fields),
        k3s=K3sSpec(**k3s_fields),
        bundles=[bundles[k] for k in sorted(bundles)],
        config=[config[k] for k in sorted(config)],
    )


def spec_hash(spec: Spec) -> str:
    canonical = json.dumps(spec.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_LAYERS: weakref.WeakKeyDictionary[Database, tuple[tuple[int, bytes], list[Layer]]] = (
    weakref.WeakKeyDictionary()
)


def load_layers(db: Database) -> list[Layer]:
    """The groups, parsed. Registration recomputes one spec at a time, so the parsed groups
    are kept per connection until the groups table changes: ``groups_store.version`` is a
    counter bumped by every group write, with a tag drawn anew each time, so neither a clock
    step nor a same-size edit nor a rolled-back write can leave a stale entry here."""
    version = groups_store.version(db)
    cached = _LAYERS.get(db)
    if cached is not None and cached[0] == version:
        return cached[1]
    layers = [
        Layer(g["name"], selectors.parse(g["selector"]), SpecPatch.model_validate(g["spec"]))
        for g in groups_store.list_all(db)
    ]
    _LAYERS[db] = (version, layers)
    return layers


def compute(
    layers: list[Layer], labels: dict[str, str], override: dict[str, Any]
) -> tuple[Spec, list[str]]:
    chosen = [layer for layer in layers if layer.selector.matches(labels)]
    patches = [layer.patch for layer in chosen]
    if override:
        patches.append(SpecPatch.model_validate(override))
    return merge(patches), [layer.name for layer in chosen]


def recompute(db: Database, device_ids: Iterable[str] | None = None) -> list[Change]:
    """Recompute the specs of these devices (or all), bump generations that changed, and
    return the changes, for nudges. Runs inside a writer job."""
    layers = load_layers(db)
    ids = list(device_ids) if device_ids is not None else None
    clusters = k3s_cluster.Clusters.load(db, layers, ids)  # K3s roles; may widen ids
    ids = clusters.ids
    known = state_store.spec_states(db, ids)
    artifacts = artifact_refs.Resolver.load(db, ids)
    renderer = bundles.Renderer.load(db, ids)
    changes: list[Change] = []
    for device_id, labels in state_store.labels_of(db, ids):
        old = known.get(device_id) or state_store.SpecState("", 0, {}, [], 0)
        spec, group_names = compute(layers, labels, old.override)
        spec = clusters.place(device_id, spec)  # before artifacts: an agent's K3s version
        spec = artifacts.resolve(device_id, spec)  # server-resolved fields: artifact_refs
        spec = renderer.render(device_id, labels, spec)  # bundles' ${device.name}, ...
        new_hash = spec_hash(spec)
        if new_hash == old.spec_hash:
            if group_names != old.groups:
                state_store.save_groups(db, device_id, group_names)
            continue
        state_store.save_spec(
            db, device_id, spec.model_dump(), new_hash, old.generation + 1, group_names
        )
        changes.append(Change(device_id, old.generation + 1, old.acked_seq))
    return changes
