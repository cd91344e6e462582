"""The K3s stand-ins of ``tests/fixtures/k3s`` as a release, and what they recorded.

No registry serves K3s here, so a "release" is the stand-in ``install.sh`` (written to the
upstream script's interface), the stand-in ``k3s`` reporting the release's version, a small
airgap images file and the ``sha256sum-amd64.txt`` a real release carries. The stand-in
``systemctl`` must come first on ``PATH`` (:func:`path_with_standins`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.server_process import REPO

FIXTURES = REPO / "tests" / "fixtures" / "k3s"
ARCH = "amd64"


@dataclass(frozen=True)
class Release:
    version: str
    install_script: Path
    binary: Path
    images: Path
    sums: Path

    def files(self) -> list[tuple[str, str, Path, str | None]]:
        """(kind, name, file, arch) as the mirror imports them."""
        return [
            ("k3s-install", "install.sh", self.install_script, None),
            ("k3s-binary", "k3s", self.binary, ARCH),
            ("k3s-images", f"k3s-airgap-images-{ARCH}.tar.zst", self.images, ARCH),
        ]


def release(version: str, directory: Path) -> Release:
    """A stand-in K3s release for ``version`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "install.sh"
    script.write_bytes((FIXTURES / "install.sh").read_bytes())
    binary = directory / "k3s"
    text = (FIXTURES / "k3s").read_text()
    assert "VERSION=v0.0.0+standin\n" in text
    binary.write_text(text.replace("VERSION=v0.0.0+standin\n", f"VERSION={version}\n"))
    binary.chmod(0o755)
    images = directory / f"k3s-airgap-images-{ARCH}.tar.zst"
    images.write_bytes(f"stand-in airgap images for {version}\n".encode() * 64)
    sums = directory / f"sha256sum-{ARCH}.txt"
    sums.write_text(
        "".join(
            f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (binary, images)
        )
    )
    return Release(version, script, binary, images, sums)


def path_with_standins() -> str:
    """``PATH`` with the stand-in ``systemctl`` first."""
    return os.pathsep.join([str(FIXTURES / "bin"), os.environ.get("PATH", "")])


def installer_runs(rootfs: Path) -> list[dict[str, str]]:
    """The environment of every run of the stand-in installer on this root, oldest first;
    ``_at`` is the run's time in nanoseconds."""
    runs: list[dict[str, str]] = []
    directory = rootfs / "var" / "log" / "k3s-install"
    if not directory.is_dir():
        return runs
    for path in sorted(directory.glob("*.env"), key=lambda p: int(p.name.split("-")[0])):
        env: dict[str, Any] = {}
        for item in path.read_bytes().split(b"\0"):
            name, sep, value = item.decode().partition("=")
            if sep:
                env[name] = value
        env["_at"] = path.name.split("-")[0]
        runs.append(env)
    return runs


def installer_variables(run: dict[str, str]) -> dict[str, str]:
    """The installer's own variables of one run: ``INSTALL_K3S_*`` and ``K3S_*``."""
    return {k: v for k, v in run.items() if k.startswith(("INSTALL_K3S_", "K3S_"))}
