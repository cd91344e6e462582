"""The pieces of a boot test around the VM: the base ISO (built through the real CLI, stages
from the build cache), and a server on 127.0.0.1 that a QEMU guest can reach and register
with."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.qemu.machine import HOST_FROM_GUEST
from tests.server_process import CORRAL, Server, free_port, tree_env
from tests.waiting import wait_until

#: A cold build (mmdebstrap, pip, squashfs) takes minutes; a cached one seconds.
BUILD_TIMEOUT = 1800


def build_base_iso(out: Path) -> tuple[Path, float]:
    """``corral image build-base --out <out>``; the ISO and the seconds it took."""
    start = time.monotonic()
    result = subprocess.run(
        [*CORRAL, "image", "build-base", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=tree_env(),
    )
    if result.returncode != 0:
        raise AssertionError(f"build-base failed ({result.returncode}):\n{result.stderr}")
    return out, time.monotonic() - start


def guest_server(tmp_path: Path) -> Server:
    """A server on 127.0.0.1 whose certificates name 10.0.2.2 and which advertises
    ``https://10.0.2.2:<port>`` and ``mqtts://10.0.2.2:<mqtt port>`` to devices."""
    port, mqtt_port = free_port(), free_port()
    env = {
        "CORRAL_SANS": HOST_FROM_GUEST,
        "CORRAL_PUBLIC_URL": f"https://{HOST_FROM_GUEST}:{port}",
        "CORRAL_MQTT_PUBLIC_URL": f"mqtts://{HOST_FROM_GUEST}:{mqtt_port}",
    }
    server = Server(data_dir=tmp_path / "data", port=port, mqtt_port=mqtt_port, env=env)
    try:
        server.start()
    except BaseException:
        server.stop_all()
        raise
    if server.port != port:  # a lost port race moved the server; its public URL is stale
        server.stop_all()
        raise RuntimeError(f"port {port} was taken; run again")
    return server


def guest_url(server: Server) -> str:
    return f"https://{HOST_FROM_GUEST}:{server.port}"


def devices(server: Server) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = server.checked("GET", "/api/v1/devices")["items"]
    return items


def wait_online(server: Server, timeout: float, detail: Any = None) -> dict[str, Any]:
    """Until exactly one device is registered and online; that device, as ``device show``."""

    def online() -> dict[str, Any] | None:
        found = devices(server)
        if len(found) == 1 and found[0].get("online"):
            device: dict[str, Any] = server.checked("GET", f"/api/v1/devices/{found[0]['id']}")
            return device
        return None

    return wait_until("the guest to register and show online", online, timeout, 2.0, detail)


def wait_registered(server: Server, timeout: float, detail: Any = None) -> None:
    wait_until("the guest to register", lambda: devices(server), timeout, 0.5, detail)
