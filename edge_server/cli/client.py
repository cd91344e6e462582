"""The CLI's HTTP client for the operator API.

By default it talks to the local server: the URL, CA and admin API token that ``corral serve``
saved in the data directory. ``--server URL`` and ``CORRAL_API_TOKEN`` point it elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from edge_server.cli.errors import CliError
from edge_server.settings import DEFAULT_DATA_DIR


@dataclass(frozen=True)
class OperatorClient:
    """The operator API over HTTPS with a Bearer API token; the CLI's one HTTP client."""

    url: str
    token: str | None
    verify: str | bool
    timeout: float = 30.0

    @classmethod
    def from_args(cls, server: str | None, data_dir: str | None) -> OperatorClient:
        root = Path(data_dir or os.environ.get("CORRAL_DATA_DIR") or DEFAULT_DATA_DIR)
        local: dict[str, Any] = {}
        config = root / "client.json"
        if config.exists():
            local = json.loads(config.read_text())
        url = server or os.environ.get("CORRAL_SERVER") or local.get("url")
        if not url:
            raise CliError(
                f"no server to talk to: {config} does not exist",
                hint="start one with `corral serve`, or pass --server URL",
            )
        token = os.environ.get("CORRAL_API_TOKEN")
        token_file = root / "admin-token"
        if token is None and token_file.exists():
            token = token_file.read_text().strip()
        ca = os.environ.get("CORRAL_CA") or local.get("ca")
        return cls(url.rstrip("/"), token, ca if ca else True)

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = requests.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                verify=self.verify,
                timeout=self.timeout,
                params={k: v for k, v in params.items() if v is not None},
            )
        except requests.RequestException as e:
            raise CliError(
                f"cannot reach {self.url}: {e}", hint="is `corral serve` running?"
            ) from e
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            if isinstance(data, dict) and "error" in data:
                raise CliError(f"{data['error']}: {data.get('detail', '')}")
            raise CliError(f"HTTP {response.status_code} from {self.url}{path}")
        return data
