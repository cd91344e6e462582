"""Streaming downloads that survive cuts: HTTP Range resume, sha256 while streaming, and a
free-space check before the first byte is written.

The bytes go to ``<dest>.part`` and become ``dest`` (rename, fsync) only once their size and
sha256 match. Free space is checked against ``size`` before connecting, or, when the caller
does not know it, against the server's ``Content-Length``/``Content-Range`` before writing
(a server that announces neither gets no check). A cut connection is resumed from where it
stopped (``Range: bytes=N-``), in the same call or, after a restart of the agent, from the
``.part`` file left on disk. Nothing is held in memory beyond one chunk.

The source is any HTTPS URL (or plain HTTP: the bytes are verified either way), fetched with
the agent's one HTTPS client (:class:`node_image.agent.transport.Https`, on ``http.client``)
and the agent's client TLS
context (mTLS to the Corral server's artifact mirror). Network reads and file work run in
threads, one chunk at a time, so a 300 MB download never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import os
import re
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from node_image.agent.transport import ApiError, Https
from node_image.errors import AgentError

log = logging.getLogger(__name__)

#: ``progress(done_bytes, total_bytes)``; total is None until the server has said it.
Progress = Callable[[int, int | None], Awaitable[None]]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _Cut(Exception):
    """The connection ended or failed before the whole file came: resume."""


class DownloadError(AgentError):
    """A download that cannot finish. ``reason`` is a condition reason: ``NoSpace``,
    ``Sha256Mismatch``, ``SizeMismatch``, ``HttpError``, ``Network``."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    #: Bytes already on disk (a ``.part`` from an earlier run) when this call started.
    resumed_from: int
    #: HTTP requests made (1 without a cut; 0 when ``dest`` was already there).
    requests: int


class _PartFile:
    """``<dest>.part``, open for appending at ``size``, hashing what it holds. Blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self._file: IO[bytes] | None = None

    def open(self, keep: bool) -> None:
        """Open for writing; with ``keep`` the bytes already there are hashed and kept."""
        self.close()
        self.digest = hashlib.sha256()
        self.size = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b" if keep else "w+b")  # closed in close()
        if keep:
            f.seek(0)
            while chunk := f.read(1 << 20):
                self.digest.update(chunk)
                self.size += len(chunk)
        self._file = f

    @property
    def file(self) -> IO[bytes]:
        if self._file is None:
            raise AgentError(f"{self.path} is not open")
        return self._file

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class DownloadOptions:
    chunk_size: int = 1 << 20
    #: Tries in a row that may fail (cut, refused, 5xx) before the download gives up.
    attempts: int = 5
    #: Seconds before the first retry; the n-th waits n times as long.
    retry_delay: float = 1.0
    #: Bytes left free after a download; a download that would eat into them is refused.
    reserve: int = 32 << 20
    #: Seconds without a byte before the connection counts as cut.
    read_timeout: float = 60.0


class Downloader:
    """Fetches files with the agent's HTTPS client and its TLS context."""

    def __init__(
        self, context: ssl.SSLContext | None = None, options: DownloadOptions = DownloadOptions()
    ) -> None:
        self._context = context if context is not None else ssl.create_default_context()
        self.options = options

    @classmethod
    @asynccontextmanager
    async def open(
        cls, context: ssl.SSLContext | None = None, options: DownloadOptions = DownloadOptions()
    ) -> AsyncIterator[Downloader]:
        """A downloader; ``context`` is the agent's client TLS context (None: the system's
        trust store). Each request has its own connection, closed when it ends."""
        yield cls(context, options)

    async def fetch(
        self,
        url: str,
        dest: Path,
        sha256: str,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> Downloaded:
        """``url`` into ``dest``, verified against ``sha256`` (and ``size`` when given)."""
        # 1. Already there and verified: nothing to fetch.
        have = await asyncio.to_thread(_verified_size, dest, sha256, size)
        if have is not None:
            return Downloaded(dest, have, sha256.lower(), 0, 0)
        # 2. Resume what an earlier run left in the .part file.
        part = _PartFile(dest.with_name(dest.name + ".part"))
        await asyncio.to_thread(part.open, True)
        try:
            resumed_from = part.size
            if size is not None and part.size > size:
                await asyncio.to_thread(part.open, False)
            # 3. Enough room for the rest, before a byte is written.
            if size is not None:
                await asyncio.to_thread(self._check_space, dest.parent, size - part.size)
            # 4. Stream, resuming after each cut.
            requests = await self._stream(url, part, size, progress)
            # 5. Durable, then verified: the size and sha256 of every byte on disk.
            await asyncio.to_thread(part.sync)
        finally:
            await asyncio.to_thread(part.close)
        got = part.digest.hexdigest()
        if got != sha256.lower() or (size is not None and part.size != size):
            await asyncio.to_thread(part.path.unlink, True)
            raise DownloadError(
                "Sha256Mismatch",
                f"{url}: sha256 {got} ({part.size} bytes) does not match the expected {sha256}",
            )
        # 6. Only a verified file takes the final name.
        await asyncio.to_thread(_commit, part.path, dest)
        log.info("downloaded %s (%s bytes, %s requests)", dest.name, part.size, requests)
        return Downloaded(dest, part.size, got, resumed_from, requests)

    async def _stream(
        self, url: str, part: _PartFile, size: int | None, progress: Progress | None
    ) -> int:
        """Request and write until the server has sent everything; the requests made."""
        requests = 0
        failures = 0
        while True:
            requests += 1
            before = part.size
            problem: BaseException
            try:
                total = await self._request(url, part, size, progress)
                if total is None or part.size >= total:
                    return requests
                problem = _Cut(f"response ended at {part.size} of {total}")
            except (_Cut, ApiError, OSError, http.client.HTTPException) as e:
                problem = e
            # A try that brought bytes resets the count: only tries in a row without progress
            # give up.
            failures = 1 if part.size > before else failures + 1
            if failures >= self.options.attempts:
                raise DownloadError(
                    "Network", f"{url}: {problem!r} after {part.size} bytes, {failures} tries"
                ) from problem
            log.info("download of %s cut at %s bytes (%r); resuming", url, part.size, problem)
            await asyncio.sleep(self.options.retry_delay * failures)

    async def _request(
        self, url: str, part: _PartFile, size: int | None, progress: Progress | None
    ) -> int | None:
        """One GET from ``part.size`` on; the total size the server announced."""
        offset = part.size
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        client = Https(origin, self._context, self.options.read_timeout, plain=True)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn, resp = await asyncio.to_thread(client.stream, path, headers)
        try:
            if resp.status == 416 and offset:
                return offset  # nothing past what we have: verify it
            if resp.status in _RETRY_STATUS:
                raise _Cut(f"HTTP {resp.status}")
            if resp.status == 200 and offset:
                log.info("%s: the server ignored Range; starting again from 0", url)
                await asyncio.to_thread(part.open, False)
                offset = 0
            elif resp.status not in (200, 206):
                raise DownloadError("HttpError", f"{url}: HTTP {resp.status} {resp.reason}")
            total = _total(resp, offset)
            if size is not None and total is not None and total != size:
                raise DownloadError(
                    "SizeMismatch", f"{url}: the server has {total} bytes, expected {size}"
                )
            if size is None and total is not None:
                await asyncio.to_thread(self._check_space, part.path.parent, total - offset)
            while chunk := await asyncio.to_thread(_read_chunk, resp, self.options.chunk_size):
                # What arrived before a cut is good: it is written, and kept for the resume.
                await asyncio.to_thread(part.write, chunk)
                if progress is not None:
                    await progress(part.size, total)
            return total
        finally:
            await asyncio.to_thread(conn.close)

    def _check_space(self, directory: Path, needed: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
        reserve = self.options.reserve
        if needed + reserve > free:
            raise DownloadError(
                "NoSpace", f"{needed} more bytes needed (plus {reserve} kept free), {free} free"
            )


def _read_chunk(resp: http.client.HTTPResponse, size: int) -> bytes:
    """Up to ``size`` bytes of the body (blocking); b"" at its end. A body cut short raises
    ``_Cut`` after handing over the bytes that came (the next call returns them)."""
    buffer = bytearray()
    while len(buffer) < size:
        try:
            data = resp.read1(size - len(buffer))
        except http.client.IncompleteRead as e:
            buffer += e.partial
            break
        except (OSError, http.client.HTTPException) as e:
            if buffer:
                break  # keep what came; the next read fails again and is reported
            raise _Cut(str(e) or type(e).__name__) from e
        if not data:
            break
        buffer += data
    return bytes(buffer)


def _total(resp: http.client.HTTPResponse, offset: int) -> int | None:
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            raise DownloadError(
                "HttpError", f"bad Content-Range {resp.getheader('Content-Range')!r}"
            )
        return None if match.group(3) == "*" else int(match.group(3))
    length = resp.getheader("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _verified_size(path: Path, sha256: str, size: int | None) -> int | None:
    """The size of ``path`` if it exists with this sha256 (and size); None otherwise."""
    try:
        have = path.stat().st_size
        if size is not None and have != size:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return have if digest.hexdigest() == sha256.lower() else None


def _commit(part: Path, dest: Path) -> None:
    os.replace(part, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
