"""CLI failures: one line and a hint, never a traceback unless --debug."""

from __future__ import annotations

from edge_server.errors import ServerError


class CliError(ServerError):
    code = "cli_error"

    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.hint = hint
