"""A K3s release on disk (or fetched from GitHub): its files, checked against its sums file.

Upstream publishes, per architecture, ``k3s`` (``k3s-arm64``, ``k3s-armhf``),
``k3s-airgap-images-<arch>.tar.zst`` and ``sha256sum-<arch>.txt``; ``install.sh`` is not in
the sums file (it is the same script for every arch), so its sha256 is computed here and
the server checks the upload against it.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from edge_server.cli.errors import CliError

ARCHES = ("amd64", "arm64", "arm")
RELEASES = "https://github.com/k3s-io/k3s/releases/download"
INSTALL_SCRIPT = "https://raw.githubusercontent.com/k3s-io/k3s/{version}/install.sh"
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)$")


@dataclass(frozen=True)
class ReleaseFile:
    path: Path
    kind: str
    arch: str | None
    sha256: str


def names(arch: str) -> tuple[str, str, str]:
    """(binary, airgap images, sums file) as upstream names them for ``arch``."""
    suffix = {"amd64": "", "arm64": "-arm64", "arm": "-armhf"}[arch]
    upstream = {"amd64": "amd64", "arm64": "arm64", "arm": "arm"}[arch]
    return (
        f"k3s{suffix}",
        f"k3s-airgap-images-{upstream}.tar.zst",
        f"sha256sum-{upstream}.txt",
    )


def sums(path: Path) -> dict[str, str]:
    """file name → sha256 from a ``sha256sum`` file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CliError(f"cannot read the sums file {path}: {e.strerror}") from e
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _SUM_LINE.match(line.strip())
        if match:
            out[Path(match.group(2)).name] = match.group(1).lower()
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verified(directory: Path, arch: str) -> list[ReleaseFile]:
    """The release's files, each checked against the sums file; CliError (one line) naming
    the first file that is missing or does not match."""
    binary, images, sums_name = names(arch)
    expected = sums(directory / sums_name)
    files: list[ReleaseFile] = []
    for name, kind in ((binary, "k3s-binary"), (images, "k3s-images")):
        path = directory / name
        if not path.is_file():
            raise CliError(f"{path} is missing", hint="a K3s release has k3s, images and sums")
        want = expected.get(name)
        if want is None:
            raise CliError(f"{name} is not listed in {sums_name}")
        got = sha256_of(path)
        if got != want:
            raise CliError(
                f"{name}: sha256 {got} does not match {want} in {sums_name}; nothing imported"
            )
        files.append(ReleaseFile(path, kind, arch, got))
    script = directory / "install.sh"
    if not script.is_file():
        raise CliError(f"{script} is missing", hint="get it from https://get.k3s.io")
    files.insert(0, ReleaseFile(script, "k3s-install", None, sha256_of(script)))
    return files


def download(version: str, arch: str, directory: Path | None) -> Path:
    """Fetch the release's files from GitHub into ``directory`` (a new temporary one when
    None). Needs internet; the files are checked against the sums file afterwards."""
    target = directory or Path(tempfile.mkdtemp(prefix="corral-k3s-"))
    target.mkdir(parents=True, exist_ok=True)
    tag = quote(version, safe="")
    urls = {name: f"{RELEASES}/{tag}/{name}" for name in names(arch)}
    urls["install.sh"] = INSTALL_SCRIPT.format(version=tag)
    for name, url in urls.items():
        _fetch(url, target / name)
    return target


def _fetch(url: str, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    try:
        with requests.get(url, stream=True, timeout=(30, 300)) as response:
            if response.status_code != 200:
                raise CliError(f"cannot download {url}: HTTP {response.status_code}")
            with part.open("wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
    except requests.RequestException as e:
        raise CliError(f"cannot download {url}: {e}", hint="no internet? use --from DIR") from e
    part.replace(dest)
