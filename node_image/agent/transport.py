"""How the agent talks HTTPS to the server: mTLS for spec and status, and the backoff that
retries it (and MQTT: :mod:`node_image.agent.mqtt`).

HTTPS goes through :class:`Https` (the standard library's ``http.client``, one kept-alive
connection), in a worker thread for the daemon and directly for registration; it keeps a real
agent's footprint small.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from node_image.errors import AgentError
from registration.document import Document, ValidationError

if TYPE_CHECKING:
    from registration.protocol import CertificateRenewResponse, K3sServerAck, K3sServerReport
from registration.desired import (
    SpecDocument,
    StatusAck,
    StatusBatch,
)

log = logging.getLogger(__name__)

_A = TypeVar("_A", bound=Document)


# --- backoff --------------------------------------------------------------------------


def jittered(seconds: float, fraction: float) -> float:
    """``seconds`` moved at random by up to ±``fraction`` of itself (not for crypto)."""
    return max(0.0, seconds * (1.0 + random.uniform(-fraction, fraction)))  # noqa: S311


@dataclass
class Backoff:
    """Exponential backoff with jitter: base, 2·base, 4·base … up to cap."""

    base: float
    cap: float
    jitter: float = 0.2
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return jittered(delay, self.jitter)

    def reset(self) -> None:
        self.attempt = 0


# --- TLS ------------------------------------------------------------------------------


def client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the Corral CA and presents the device certificate.

    Blocking (reads files): call it through ``asyncio.to_thread``.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


# --- HTTPS ----------------------------------------------------------------------------


class ApiError(AgentError):
    """A request to the server failed; ``status`` is the HTTP status, None if none came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def unverified_tls() -> ssl.SSLContext:
    """TLS that does not check the server: only to fetch the public CA, which is trusted
    afterwards only if its sha256 matches the registration token's."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint afterwards
    return context


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_detail(self) -> str:
        """``error: detail`` from the server's JSON error body, else the body's start."""
        try:
            decoded = json.loads(self.body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return f"{decoded.get('error', '')}: {decoded.get('detail', '')}"
        return self.body[:200].decode(errors="replace")


class Https:
    """The agent's one HTTPS client: blocking, over one kept-alive connection to the server.

    The standard library's ``http.client`` keeps a real agent's footprint small (no
    ``requests``, no urllib3). :class:`ApiClient` runs it in a worker thread; registration
    calls it directly.
    """

    def __init__(
        self, url: str, context: ssl.SSLContext, timeout: float = 30.0, *, plain: bool = False
    ) -> None:
        """``plain`` also allows an ``http://`` URL: only for downloads, whose bytes are
        verified by sha256 and signature whatever carries them."""
        parts = urlsplit(url)
        schemes = ("https", "http") if plain else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise AgentError(f"API endpoint {url!r} must be an https:// URL")
        self.url = url.rstrip("/")
        self._plain = parts.scheme == "http"
        self._host = parts.hostname
        self._port = parts.port or (80 if self._plain else 443)
        self._prefix = parts.path.rstrip("/")
        self._context = context
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        #: Counts :meth:`close` calls. A request that started before one (the agent stopping,
        #: a new certificate) closes its connection when it ends, instead of keeping it: the
        #: thread it runs in outlives the cancelled task that awaited it.
        self._epoch = 0
        self._guard = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        url = self._prefix + path
        for attempt in range(2):
            with self._guard:
                epoch, kept, self._conn = self._epoch, self._conn, None
            reused = kept is not None
            conn = kept or self._connect()
            try:
                conn.request(method, url, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # A kept-alive connection the server closed meanwhile: retry once, fresh.
                # Safe for POST too: the server applies each (device, seq) once.
                stale = isinstance(e, http.client.RemoteDisconnected | ConnectionError)
                if reused and stale and attempt == 0:
                    continue
                raise ApiError(f"{method} {self.url}{path}: {e}") from e
            with self._guard:
                keep = not response.will_close and epoch == self._epoch
                if keep:
                    self._conn = conn
            if not keep:
                conn.close()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")

    def stream(
        self, path: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """``GET path`` on a connection of its own, whose body the caller reads in chunks and
        then closes (blocking). For downloads: nothing is held in memory. Raises ``ApiError``
        when no answer comes."""
        conn = self._connect()
        try:
            conn.request("GET", self._prefix + path, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ApiError(f"GET {self.url}{path}: {e}") from e

    def _connect(self) -> http.client.HTTPConnection:
        if self._plain:
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._context
        )

    def reload_certificate(self, cert: Path, key: Path) -> None:
        """Present the certificate in ``cert`` from the next handshake on (blocking): it is
        loaded into the shared TLS context and the kept-alive connection is dropped."""
        self._context.load_cert_chain(str(cert), str(key))
        self.close()

    def close(self) -> None:
        """Close the kept-alive connection, and any a request still running would keep."""
        with self._guard:
            self._epoch += 1
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass(frozen=True)
class PulledSpec:
    document: SpecDocument
    etag: str | None


class ApiClient:
    """The device's mTLS calls: ``GET …/spec`` and ``POST …/status``."""

    def __init__(
        self, api_url: str, device_id: str, context: ssl.SSLContext, timeout: float = 30.0
    ) -> None:
        self._https = Https(api_url, context, timeout)
        self._prefix = f"/api/v1/devices/{device_id}"
        self._device_id = device_id
        self._lock = asyncio.Lock()

    async def get_spec(self, etag: str | None) -> PulledSpec | None:
        """The device's spec, or None when it still matches ``etag`` (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        reply = await self._call("GET", "/spec", None, headers)
        if reply.status == 304:
            return None
        self._check(reply, "GET spec")
        try:
            document = SpecDocument.model_validate_json(reply.body)
        except ValidationError as e:
            raise ApiError(f"the server sent a spec that does not validate: {e}") from e
        if document.device_id != self._device_id:
            raise ApiError(f"the server sent the spec of {document.device_id}")
        return PulledSpec(document, reply.headers.get("etag"))

    async def post_status(self, batch: StatusBatch) -> StatusAck:
        return await self._post("/status", batch, StatusAck, "a status ack")

    async def renew_certificate(self, csr: str) -> CertificateRenewResponse:
        """``POST …/certificate``: a new certificate for ``csr``, signed while the current one
        is still valid (mTLS with it)."""
        # registration's documents: loaded when needed, not by the idle agent.
        from registration.protocol import CertificateRenewRequest, CertificateRenewResponse

        request = CertificateRenewRequest(csr=csr)
        return await self._post("/certificate", request, CertificateRenewResponse, "a certificate")

    async def report_k3s_server(self, report: K3sServerReport) -> K3sServerAck:
        """``POST …/k3s``: this device, its group's K3s server node, says how to join it."""
        from registration.protocol import K3sServerAck

        return await self._post("/k3s", report, K3sServerAck, "a k3s ack")

    async def _post(self, path: str, document: Document, answer: type[_A], what: str) -> _A:
        """POST ``document`` as JSON to ``path``; the answer, validated as ``answer``."""
        body = document.model_dump_json().encode()
        reply = await self._call("POST", path, body, {"Content-Type": "application/json"})
        self._check(reply, f"POST {path.lstrip('/')}")
        try:
            return answer.model_validate_json(reply.body)
        except ValidationError as e:
            raise ApiError(f"the server sent {what} that does not validate: {e}") from e

    async def reload_certificate(self, cert: Path, key: Path) -> None:
        """Present the certificate now in ``cert`` from the next handshake on: it is loaded
        into the TLS context (which MQTT shares), and the kept-alive connection is dropped."""
        async with self._lock:
            await asyncio.to_thread(self._https.reload_certificate, cert, key)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._https.close)

    async def _call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Reply:
        async with self._lock:  # one request at a time on the kept-alive connection
            return await asyncio.to_thread(
                self._https.request, method, self._prefix + path, body, headers
            )

    @staticmethod
    def _check(reply: Reply, what: str) -> None:
        if reply.status == 200:
            return
        if reply.status == 403:
            raise ApiError(
                f"{what} forbidden: certificate revoked or not this device", reply.status
            )
        raise ApiError(f"{what} failed ({reply.status}): {reply.error_detail()}", reply.status)
