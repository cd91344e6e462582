"""What a network-fault lab (``tests/e2e/netns.py``) leaves behind, and how it goes:
ownership markers, the processes a lab started, and :func:`sweep_leftovers` for the labs of
runs that crashed. Also the small ``ip`` / ``nft`` helpers both modules use.

Names follow one scheme: ``crl`` + 6 hex digits (the lab's prefix), then ``-sw``, ``-srv`` or
``-aN`` for namespaces, ``br`` or ``vN`` for links, ``_name`` for nftables tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX_STEM = "crl"
#: One lab's name prefix: ``crl`` + 6 hex digits (so interface names stay within 15 characters).
PREFIX_RE = re.compile(r"^crl[0-9a-f]{6}$")
_NS_RE = re.compile(r"^(crl[0-9a-f]{6})-(?:sw|srv|a\d{1,3})$")
_LINK_RE = re.compile(r"^(crl[0-9a-f]{6})(?:br|v\d{1,3})$")
_TABLE_RE = re.compile(r"^(crl[0-9a-f]{6})_[a-z]+$")

#: Where each live lab records its owner (pid and start time), so that the sweeper leaves labs of
#: running processes alone and only removes those of processes that are gone.
MARKER_DIR = Path("/run/corral-netns-lab")

_IP_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A lab command failed."""


class LabTeardownError(LabError):
    """Tearing a lab down left something behind or failed; the message says what."""


# --------------------------------------------------------------------------------------------
# Small helpers


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LabError(f"{name!r} is not installed (scripts/install-debian-deps.sh installs it)")
    return path


def _cmd(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a short administrative command; return its stdout, raise LabError when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_IP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: timed out after {_IP_TIMEOUT}s") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {detail}")
    return done.stdout


def _ip(*args: str, ns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    argv = [_tool("ip")]
    if ns is not None:
        argv += ["-n", ns]
    return _cmd([*argv, *args], stdin=stdin, check=check)


def _ip_batch(ns: str, lines: Iterable[str]) -> None:
    """Run several ``ip`` commands in namespace ``ns`` with one process."""
    _ip("-batch", "-", ns=ns, stdin="".join(f"{line}\n" for line in lines))


def _list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = _ip("netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_links() -> list[str]:
    out = _ip("-o", "link", "show")
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _root_nft_tables() -> list[tuple[str, str]]:
    """(family, name) of the nftables tables of the root namespace."""
    out = _cmd([_tool("nft"), "list", "tables"], check=False)
    tables = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            tables.append((parts[1], parts[2]))
    return tables


def _proc_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    # Fields after "(comm)" start at field 3 (state); starttime is field 22.
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _pid_gone(pid: int) -> bool:
    return _proc_start_time(pid) is None


def _signal_tree(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``proc`` leads, or to ``proc`` alone if it leads none."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _netns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False)
    own = {os.getpid(), os.getppid()}
    return [int(tok) for tok in out.split() if tok.isdigit() and int(tok) not in own]


def _kill_netns_processes(ns: str, grace: float) -> list[int]:
    """Kill every process inside namespace ``ns``: SIGTERM, then SIGKILL. Return survivors."""
    pids = _netns_pids(ns)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if not _pid_gone(pid)]
            if pids:
                time.sleep(0.02)
        if not pids:
            break
    return [pid for pid in _netns_pids(ns) if not _pid_gone(pid)]


# --------------------------------------------------------------------------------------------
# Ownership markers


@dataclass(frozen=True)
class _Marker:
    prefix: str
    pid: int
    start_time: int | None
    third_octet: int | None
    #: Unreadable but fresh: a lab is writing it this instant.
    being_written: bool = False

    @property
    def owner_alive(self) -> bool:
        if self.being_written:
            return True
        return self.start_time is not None and _proc_start_time(self.pid) == self.start_time


def _marker_path(prefix: str) -> Path:
    return MARKER_DIR / f"{prefix}.json"


def _read_markers() -> dict[str, _Marker]:
    markers: dict[str, _Marker] = {}
    if not MARKER_DIR.is_dir():
        return markers
    for path in MARKER_DIR.glob("crl*.json"):
        prefix = path.stem
        if not PREFIX_RE.match(prefix):
            continue
        try:
            data = json.loads(path.read_text())
            markers[prefix] = _Marker(
                prefix, int(data["pid"]), data.get("start_time"), data.get("third_octet")
            )
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable: a lab that is starting writes it this instant, unless it is old.
            try:
                fresh = time.time() - path.stat().st_mtime < 60
            except OSError:
                continue  # removed meanwhile
            markers[prefix] = _Marker(prefix, -1, None, None, being_written=fresh)
    return markers


# --------------------------------------------------------------------------------------------
# Sweeping


def leftovers(prefix: str) -> list[str]:
    """Everything of lab ``prefix`` still visible: namespaces, root links, root nft tables, marker.

    An empty list means the lab is gone. Interfaces and nft tables inside the lab's namespaces
    go with the namespaces.
    """
    found = [f"netns {ns}" for ns in _list_netns() if ns.startswith(f"{prefix}-")]
    found += [f"link {name}" for name in _root_links() if name.startswith(prefix)]
    tables = _root_nft_tables()
    found += [f"nft table {fam} {name}" for fam, name in tables if name.startswith(prefix)]
    if _marker_path(prefix).exists():
        found.append(f"marker {_marker_path(prefix)}")
    return found


def sweep_leftovers(grace: float = 1.0) -> list[str]:
    """Remove what labs of crashed earlier runs left behind; return what was removed.

    Only names that follow this module's scheme (``crl`` + 6 hex digits) are considered, and a lab
    whose owning process is still running (per its marker in :data:`MARKER_DIR`) is left alone,
    so it is safe to call while other labs, in this process or others, are in use. Processes
    still inside a leftover namespace are killed before the namespace is deleted.
    """
    # List first, read markers second: a lab writes its marker before creating anything, so every
    # namespace listed here of a live lab has its marker on disk by the time it is read.
    namespaces = _list_netns()
    links = _root_links()
    tables = _root_nft_tables()
    markers = _read_markers()

    def stale(prefix: str) -> bool:
        marker = markers.get(prefix)
        return marker is None or not marker.owner_alive

    removed: list[str] = []
    # Host namespaces first, switch namespaces last.
    for ns in sorted(namespaces, key=lambda n: n.endswith("-sw")):
        match = _NS_RE.match(ns)
        if not match or not stale(match.group(1)):
            continue
        _kill_netns_processes(ns, grace)
        _ip("netns", "del", ns, check=False)
        removed.append(f"netns {ns}")
    for name in links:
        match = _LINK_RE.match(name)
        if match and stale(match.group(1)):
            _ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    for family, name in tables:
        match = _TABLE_RE.match(name)
        if match and stale(match.group(1)):
            _cmd([_tool("nft"), "delete", "table", family, name], check=False)
            removed.append(f"nft table {family} {name}")
    remaining = set(_list_netns())
    for prefix, marker in markers.items():
        if not marker.owner_alive and not any(ns.startswith(f"{prefix}-") for ns in remaining):
            with contextlib.suppress(FileNotFoundError):
                _marker_path(prefix).unlink()
                removed.append(f"marker {prefix}")
    return removed


# --------------------------------------------------------------------------------------------
# Processes


class _ProcessTracker:
    """The processes a lab started; all of them die at teardown."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), **kw)
        self._procs.append(proc)
        return proc

    def stop_all(self, grace: float) -> list[str]:
        """SIGTERM each process group, SIGKILL what is left after ``grace`` s, reap, close pipes."""
        procs, self._procs = self._procs, []
        errors: list[str] = []
        for proc in procs:
            _signal_tree(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_tree(proc, signal.SIGKILL)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    errors.append(f"process {proc.pid} ({proc.args!r}) survived SIGKILL")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        return errors
