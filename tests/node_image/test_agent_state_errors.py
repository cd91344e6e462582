"""A corrupt file in the agent's state directory: the real ``corral-agent`` names the file and
says what to do, in one line, and exits non-zero; no traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.node_image.test_agent_register import agent, write_seed
from tests.support import BIN, Server


@pytest.fixture(scope="module")
def registered(shared_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory a real ``corral-agent register`` filled."""
    tmp = tmp_path_factory.mktemp("registered")
    token = shared_server.create_token(max_uses=None)["token"]
    seed = write_seed(tmp / "seed.json", shared_server.url, token)
    state = tmp / "state"
    result = agent("register", "--seed", str(seed), "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    return state


def copy_state(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("corral-agent: error: "), result.stderr
    return last


@pytest.mark.parametrize(
    ("name", "garbage", "advice"),
    [
        ("identity.json", b'{"device_id": "dev-', "registers again"),
        ("spec.json", b"\x00\x00\x00", "rebuilds the file"),
        ("agent.json", b"{not json", "rebuilds the file"),
        ("outbox.json", b'{"events": [', "rebuilds the file"),
    ],
)
def test_a_corrupt_state_file_is_named_with_what_to_do(
    registered: Path, tmp_path: Path, name: str, garbage: bytes, advice: str
) -> None:
    state = copy_state(registered, tmp_path / "state")
    (state / name).write_bytes(garbage)
    result = subprocess.run(
        [
            str(BIN / "corral-agent"),
            "run",
            "--state-dir",
            str(state),
            "--simulated",
            str(tmp_path / "host"),
            "--no-mqtt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = error_line(result)
    assert str(state / name) in line and "corrupt" in line and advice in line
    assert "move it aside" in line


def test_register_with_a_corrupt_identity_says_which_file(
    registered: Path, shared_server: Server, tmp_path: Path
) -> None:
    state = copy_state(registered, tmp_path / "state")
    (state / "identity.json").write_text("[]")  # JSON, but not an identity
    token = shared_server.create_token()["token"]
    seed = write_seed(tmp_path / "seed.json", shared_server.url, token)
    line = error_line(agent("register", "--seed", str(seed), "--state-dir", str(state)))
    assert str(state / "identity.json") in line and "move it aside" in line
    # Once moved aside, the same machine registers again as the same device.
    before = json.loads((registered / "identity.json").read_text())["device_id"]
    (state / "identity.json").rename(state / "identity.json.corrupt")
    again = agent("register", "--seed", str(seed), "--state-dir", str(state))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["device_id"] == before
