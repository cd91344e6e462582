"""Device names and labels rendered from templates, e.g. ``edge-${dmi.product_uuid:8}``.

A placeholder is ``${path}`` or ``${path:N}`` (the first N characters). Paths name facts:
``dmi.<field>``, ``cpu.model``, ``cpu.count``, ``hostname``, ``net.mac`` (the first NIC's
MAC, without colons), ``label.<key>``. Every rendered value is sanitised to
``[A-Za-z0-9._-]`` and at most 63 characters, so it is a valid name and label value.
"""

from __future__ import annotations

import re

from registration.errors import TemplateError
from registration.protocol import Facts

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.-]+)(?::(\d{1,2}))?\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LEN = 63


def sanitise(value: str) -> str:
    """Map anything to ``[A-Za-z0-9._-]{0,63}``, starting and ending alphanumeric."""
    cleaned = _UNSAFE.sub("-", value)[:MAX_LEN]
    return cleaned.strip("._-")


def context(facts: Facts, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The flat name → value map that templates draw on."""
    values: dict[str, str] = {
        "hostname": facts.hostname,
        "cpu.model": facts.cpu.model or "",
        "cpu.count": str(facts.cpu.count),
        "kernel": facts.kernel,
        "arch": facts.arch,
    }
    for key, value in facts.dmi.items():
        values[f"dmi.{key}"] = value
    macs = [nic.mac for nic in facts.nics if nic.mac]
    if macs:
        values["net.mac"] = macs[0].replace(":", "")
    for key, value in (labels or {}).items():
        values[f"label.{key}"] = value
    return values


def validate(template: str) -> None:
    """Refuse templates with a stray ``${`` that is not a placeholder."""
    if "${" in _PLACEHOLDER.sub("", template):
        raise TemplateError(f"template {template!r} has a malformed ${{…}} placeholder")


def render(template: str, values: dict[str, str]) -> str:
    """Render and sanitise. A fact that is missing renders as empty; an empty result is an error."""
    validate(template)

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1), "")
        if match.group(2):
            value = value[: int(match.group(2))]
        return value

    rendered = sanitise(_PLACEHOLDER.sub(replace, template))
    if not rendered:
        raise TemplateError(f"template {template!r} rendered to an empty name")
    return rendered


def render_name(template: str, values: dict[str, str], fallback: str) -> str:
    """Render a device name. When every placeholder is missing (a board without DMI, say),
    ``fallback`` is appended, so names stay distinct."""
    validate(template)
    placeholders = _PLACEHOLDER.findall(template)
    if placeholders and not any(values.get(path) for path, _ in placeholders):
        base = sanitise(_PLACEHOLDER.sub("", template))
        return sanitise(f"{base}-{fallback}" if base else fallback)
    return render(template, values)


def render_labels(templates: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """Render label values; a label whose value renders empty is dropped, not an error."""
    out: dict[str, str] = {}
    for key, template in templates.items():
        try:
            out[key] = render(template, values)
        except TemplateError:
            if "${" not in template:
                raise
    return out


# Bundles (Kubernetes YAML, HelmChart objects) are rendered per device with their own
# placeholders; any other ``${...}`` (a shell variable in a ConfigMap, say) is left alone.
_DOCUMENT_PLACEHOLDER = re.compile(
    r"\$\{(labels\.[A-Za-z0-9_./-]+|device\.name|device\.id)(?::(\d{1,2}))?\}"
)


def document_values(device_id: str, name: str, labels: dict[str, str]) -> dict[str, str]:
    """What a bundle's placeholders draw on: ``device.id``, ``device.name``, ``labels.<key>``."""
    values = {"device.id": device_id, "device.name": name}
    values.update({f"labels.{key}": value for key, value in labels.items()})
    return values


def render_document(text: str, values: dict[str, str]) -> str:
    """Substitute ``${labels.<key>}``, ``${device.name}`` and ``${device.id}`` (``:N`` keeps
    the first N characters). Each value is sanitised to ``[A-Za-z0-9._-]``, so it cannot
    change a YAML document's structure (no quotes, colons, ``#``, spaces or newlines); a
    missing label renders empty."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1), "")
        if match.group(2):
            value = value[: int(match.group(2))]
        return sanitise(value)

    return _DOCUMENT_PLACEHOLDER.sub(replace, text)
