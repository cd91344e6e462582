"""The seed file: ``{"server": "https://host:port", "token": "crl1...", "labels": {...}}``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from node_image.errors import AgentError
from registration import tokens
from registration.errors import RegistrationError


@dataclass(frozen=True)
class Seed:
    server: str
    token: tokens.RegistrationToken
    labels: dict[str, str] = field(default_factory=dict)
    hostname_template: str | None = None
    install_disk: str | None = None
    network: dict[str, Any] = field(default_factory=dict)


def load(path: Path) -> Seed:
    from registration.protocol import check_labels  # pydantic models: only to register

    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise AgentError(f"cannot read seed {path}: {e.strerror}") from e
    except ValueError as e:
        raise AgentError(f"seed {path} is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise AgentError(f"seed {path} must be a JSON object")
    server = data.get("server")
    if (
        not isinstance(server, str)
        or urlparse(server).scheme != "https"
        or not urlparse(server).netloc
    ):
        raise AgentError(f"seed {path}: 'server' must be an https:// URL")
    try:
        token = tokens.parse(data.get("token"))
        labels = check_labels(dict(data.get("labels") or {}))
    except (RegistrationError, ValueError, TypeError) as e:
        raise AgentError(f"seed {path}: {e}") from e
    return Seed(
        server=server.rstrip("/"),
        token=token,
        labels=labels,
        hostname_template=data.get("hostname_template"),
        install_disk=data.get("install_disk"),
        network=dict(data.get("network") or {}),
    )
