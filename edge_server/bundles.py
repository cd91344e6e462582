"""Bundles rendered per device: a group's bundle may say ``${labels.<key>}``,
``${device.name}`` or ``${device.id}`` (:func:`registration.templating.render_document`);
each device's spec carries its own rendering, so its sha256 and generation follow."""

from __future__ import annotations

from registration import templating
from registration.desired import Spec


def render(spec: Spec, device_id: str, name: str, labels: dict[str, str]) -> Spec:
    if not spec.bundles:
        return spec
    values = templating.document_values(device_id, name, labels)
    bundles = [
        b.model_copy(update={"content": templating.render_document(b.content, values)})
        for b in spec.bundles
    ]
    return spec.model_copy(update={"bundles": bundles})
