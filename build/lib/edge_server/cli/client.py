"""The CLI's HTTP client for the operator API.

By default it talks to the local server: the URL, CA and admin API token that ``corral serve``
saved in the data directory. ``--server URL`` and ``CORRAL_API_TOKEN`` point it elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from edge_server.cli.errors import CliError
from edge_server.settings import DEFAULT_DATA_DIR


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


#: Uploads: 30 s to connect, then up to 10 minutes for the server's answer.
UPLOAD_TIMEOUT = (30.0, 600.0)


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
        return self._send(method, path, {"json": body}, params)

    def upload(self, path: str, stream: Readable, size: int, **params: Any) -> Any:
        """POST ``size`` bytes read from ``stream`` (streamed, with a Content-Length);
        the JSON answer."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        kwargs = {"data": stream, "headers": headers}
        return self._send("POST", path, kwargs, params, UPLOAD_TIMEOUT)

    def _send(
        self,
        method: str,
        path: str,
        kwargs: dict[str, Any],
        params: dict[str, Any],
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.pop("headers", {}))
        try:
            response = requests.request(
                method,
                self.url + path,
                headers=headers,
                verify=self.verify,
                timeout=timeout or self.timeout,
                params={k: v for k, v in params.items() if v is not None},
                **kwargs,
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
