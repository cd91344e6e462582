"""Bundles rendered per device: a group's bundle may say ``${labels.<key>}``,
``${device.name}`` or ``${device.id}`` (:func:`registration.templating.render_document`);
each device's spec carries its own rendering, so its sha256 and generation follow."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlite_utils import Database

from edge_server.store import state as state_store
from registration import templating
from registration.desired import Spec


@dataclass(frozen=True)
class Renderer:
    """Renders the bundles of the specs of one recomputation (inside its writer job)."""

    names: dict[str, str]

    @classmethod
    def load(cls, db: Database, device_ids: Iterable[str] | None) -> Renderer:
        return cls(state_store.names_of(db, device_ids))

    def render(self, device_id: str, labels: dict[str, str], spec: Spec) -> Spec:
        if not spec.bundles:
            return spec
        name = self.names.get(device_id, "")
        values = templating.document_values(device_id, name, labels)
        bundles = [
            b.model_copy(update={"content": templating.render_document(b.content, values)})
            for b in spec.bundles
        ]
        return spec.model_copy(update={"bundles": bundles})
