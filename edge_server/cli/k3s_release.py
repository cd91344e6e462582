"""A K3s release on disk (or downloaded): its files, checked against its sums file.

Upstream publishes, per architecture, ``k3s`` (``k3s-arm64``, ``k3s-armhf``),
``k3s-airgap-images-<arch>.tar.zst`` and ``sha256sum-<arch>.txt``; ``install.sh`` is not in
the sums file (it is the same script for every arch), so its sha256 is computed here and
the server checks the upload against it.

Downloads come from upstream by default: the release files from ``RELEASES``/TAG/NAME and
``install.sh`` from ``INSTALL_SCRIPT``. A mirror (or a test) is named with
``--release-url`` / ``$CORRAL_K3S_RELEASE_URL`` and ``--install-script-url`` /
``$CORRAL_K3S_INSTALL_SCRIPT_URL`` (``{version}`` in it is the release tag).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from edge_server.cli.errors import CliError

ARCHES = ("amd64", "arm64", "arm")
RELEASES = "https://github.com/k3s-io/k3s/releases/download"
INSTALL_SCRIPT = "https://raw.githubusercontent.com/k3s-io/k3s/{version}/install.sh"
RELEASES_ENV = "CORRAL_K3S_RELEASE_URL"
INSTALL_SCRIPT_ENV = "CORRAL_K3S_INSTALL_SCRIPT_URL"
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


@dataclass(frozen=True)
class Source:
    """Where a release is downloaded from (see the module's docstring)."""

    releases: str = RELEASES
    install_script: str = INSTALL_SCRIPT

    @classmethod
    def of(cls, releases: str | None, install_script: str | None) -> Source:
        """The options given, else the environment, else upstream; CliError for a URL that
        is not http(s)."""
        chosen = cls(
            releases or os.environ.get(RELEASES_ENV) or RELEASES,
            install_script or os.environ.get(INSTALL_SCRIPT_ENV) or INSTALL_SCRIPT,
        )
        for url in (chosen.releases, chosen.install_script):
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise CliError(f"not an http(s) URL: {url!r}")
        return cls(chosen.releases.rstrip("/"), chosen.install_script)

    def urls(self, version: str, arch: str) -> dict[str, str]:
        """File name → URL for the release's install script, binary, images and sums."""
        tag = quote(version, safe="")
        urls = {"install.sh": self.install_script.replace("{version}", tag)}
        urls.update({name: f"{self.releases}/{tag}/{name}" for name in names(arch)})
        return urls


def download(version: str, arch: str, directory: Path, source: Source | None = None) -> Path:
    """Fetch the release's files into ``directory`` (from upstream unless ``source`` says
    otherwise). Each file is written whole or not at all: a download cut short, an HTTP
    error or a full disk is a CliError naming the URL, with no ``.part`` file left. The
    files are checked against the sums file afterwards (:func:`verified`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, url in (source or Source()).urls(version, arch).items():
        _fetch(url, directory / name)
    return directory


def _fetch(url: str, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    got, length = 0, None
    try:
        with requests.get(url, stream=True, timeout=(30, 300)) as response:
            if response.status_code != 200:
                raise CliError(f"cannot download {url}: HTTP {response.status_code}")
            if response.headers.get("Content-Encoding", "identity") == "identity":
                length = response.headers.get("Content-Length")
            with part.open("wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
            if length is not None and length.isdigit() and got != int(length):
                raise _cut(url, got, length)  # urllib3 checks this too; never trust one check
        part.replace(dest)
    except requests.exceptions.ChunkedEncodingError as e:  # the body ended early
        raise _cut(url, got, length) from e
    except requests.RequestException as e:
        raise CliError(f"cannot download {url}: {e}", hint="no internet? use --from DIR") from e
    except OSError as e:
        raise CliError(f"cannot write {part}: {e.strerror}") from e
    finally:
        part.unlink(missing_ok=True)


def _cut(url: str, got: int, length: str | None) -> CliError:
    of = f" of {length}" if length is not None else ""
    return CliError(f"the download of {url} was cut short after {got}{of} bytes; nothing imported")
