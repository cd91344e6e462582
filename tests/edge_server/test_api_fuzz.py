"""Schemathesis fuzzes a real server from its own OpenAPI document: no request may get a 5xx,
and every answer must match the document (status, headers, content type, body)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import BIN, Server

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_server_error(server: Server, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "st"),
            "run",
            f"{server.url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {server.admin_token}",
            "--tls-verify",
            str(server.ca),
            "--checks",
            CHECKS,
            "--phases",
            "examples,fuzzing,stateful",
            "--max-examples",
            "20",
            "--max-time",
            "40",
            "--generation-deterministic",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
