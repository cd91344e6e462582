"""``corral broker mosquitto-config`` as an operator runs it: a real process, a fresh data dir."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import BIN


def test_mosquitto_config_on_a_fresh_data_dir_shows_the_admin_but_claims_no_serving(
    tmp_path: Path,
) -> None:
    data, out = tmp_path / "data", tmp_path / "mosquitto"
    result = subprocess.run(
        [str(BIN / "corral"), "--data-dir", str(data), "broker", "mosquitto-config"]
        + ["--out", str(out), "--listen", "127.0.0.1:18883"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "admin password:" in result.stdout  # shown once, so it must be shown here
    assert "serving on" not in result.stdout  # nothing is serving
    assert "MQTT:" not in result.stdout
    assert f"wrote {out / 'mosquitto.conf'}" in result.stdout
