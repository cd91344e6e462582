"""A wrong clock: a board without a real-time clock boots in 1970, and one with a flat RTC
battery can be years off either way. TLS then refuses the server's certificate ("not yet
valid", "expired") and nothing else works, so the agent puts the clock right first.

- **Impossible** (earlier than this agent's build): say so in one line, wait a bounded time
  for time sync (systemd-timesyncd's ``/run/systemd/timesync/synchronized``), and failing
  that take the time from the server.
- **A certificate date error** from the server (a clock ahead, or behind but not
  impossibly): take the time from the server and correct a skew above ``SKEW_LIMIT``.

The server's time comes over the CA-pinned connection: TLS without date checks, the CA's
sha256 compared with the pinned one, the server's certificate verified as issued by that CA
(signature, ``serverAuth``; validity dates ignored), and the time read from that same
connection's HTTP ``Date`` header.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import logging
import ssl
import time
from urllib.parse import urlsplit

from node_image.errors import AgentError
from node_image.host import Host

log = logging.getLogger(__name__)

#: No agent was built before this (2026-12-01T00:00:00Z): a clock earlier is wrong.
BUILD_FLOOR = 1_796_083_200
#: Written by the image build: seconds since the epoch when the image was built.
BUILD_TIME_FILE = "/etc/corral/build-time"
#: systemd-timesyncd creates it once the clock is synchronised.
SYNC_FILE = "/run/systemd/timesync/synchronized"
#: A smaller difference from the server's clock is left to NTP.
SKEW_LIMIT = 300.0
#: How long to wait for time sync before asking the server.
SYNC_WAIT = 30.0
TIMEOUT = 30.0

#: OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED.
_DATE_ERRORS = (9, 10)


class ClockError(AgentError):
    """The server's time could not be had over the pinned connection."""


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def floor(host: Host) -> float:
    """The earliest believable time: this image's build time, or the agent's."""
    try:
        found = host.read_file(BUILD_TIME_FILE, 64)
    except OSError:
        found = None
    if found is not None:
        try:
            return max(float(BUILD_FLOOR), float(found.content.decode().strip()))
        except ValueError:
            log.warning("%s is not a number of seconds; ignored", BUILD_TIME_FILE)
    return float(BUILD_FLOOR)


def is_date_error(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is TLS refusing a certificate for its dates."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) and (seen.verify_code in _DATE_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def wait_for_sync(host: Host, seconds: float, earliest: float) -> bool:
    """Up to ``seconds`` for time sync; True once the clock is believable again."""
    deadline = time.monotonic() + seconds
    while True:
        if time.time() >= earliest:
            return True
        if host.read_file(SYNC_FILE, 0) is not None and time.time() >= earliest:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def server_time(server: str, ca_fingerprint: str, timeout: float = TIMEOUT) -> float:
    """The server's clock, read over a connection whose certificate chains to the pinned CA
    (dates not checked: ours are what is in doubt)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from registration import identity
    from registration.errors import RegistrationError

    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise ClockError(f"server {server!r} is not an https:// URL")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below against the pinned CA
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=timeout, context=context
    )
    try:
        conn.request("GET", parts.path.rstrip("/") + "/api/v1/ca")
        response = conn.getresponse()
        body = response.read()
        date = response.getheader("Date")
        received = time.monotonic()
        leaf_der = conn.sock.getpeercert(binary_form=True) if conn.sock else None
    except (OSError, http.client.HTTPException) as e:
        raise ClockError(f"cannot reach {server} for its time: {e}") from e
    finally:
        conn.close()
    if response.status != 200 or date is None or leaf_der is None:
        raise ClockError(f"{server} gave no time (HTTP {response.status})")
    try:
        ca = identity.verify_ca_fingerprint(body, ca_fingerprint)
        leaf = x509.load_der_x509_certificate(leaf_der)
        leaf.verify_directly_issued_by(ca)
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (RegistrationError, ValueError, TypeError, InvalidSignature) as e:
        raise ClockError(f"{server}'s certificate is not from the pinned CA: {e}") from e
    except x509.ExtensionNotFound as e:
        raise ClockError(f"{server}'s certificate is not a server certificate") from e
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise ClockError(f"{server}'s certificate is not a server certificate")
    try:
        when = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError) as e:
        raise ClockError(f"{server} sent a Date header that is not a date: {date!r}") from e
    # The header has whole seconds; half a second is the expected truncation.
    return when + 0.5 + (time.monotonic() - received)


def correct_from_server(host: Host, server: str, ca_fingerprint: str) -> bool:
    """Set the clock from the server's when they differ by more than ``SKEW_LIMIT``."""
    theirs = server_time(server, ca_fingerprint)
    skew = theirs - time.time()
    if abs(skew) <= SKEW_LIMIT:
        log.info("clock within %.0fs of %s's; left to time sync", skew, server)
        return False
    host.set_clock(theirs)
    log.warning(
        "clock set from %s: %s (it was %.0fs %s)",
        server,
        iso(theirs),
        abs(skew),
        "behind" if skew > 0 else "ahead",
    )
    return True


def ensure_believable(
    host: Host, server: str, ca_fingerprint: str, sync_wait: float = SYNC_WAIT
) -> bool:
    """Before registering: a clock earlier than the build is put right (time sync, else the
    server). True if the clock was set here."""
    earliest = floor(host)
    now = time.time()
    if now >= earliest:
        return False
    log.warning(
        "the clock says %s, before this agent was built (%s): waiting up to %.0fs for time "
        "sync, then taking the time from %s",
        iso(now),
        iso(earliest),
        sync_wait,
        server,
    )
    if wait_for_sync(host, sync_wait, earliest):
        log.info("time synchronised: %s", iso(time.time()))
        return False
    return correct_from_server(host, server, ca_fingerprint)


def recover(host: Host, server: str, ca_fingerprint: str, error: BaseException) -> bool:
    """After ``error``: when TLS refused a certificate for its dates, put the clock right
    from the server. True if the clock was set (try again at once)."""
    if not is_date_error(error):
        return False
    now, earliest = time.time(), floor(host)
    if now < earliest:
        log.warning(
            "the clock says %s, before this agent was built (%s): taking the time from %s",
            iso(now),
            iso(earliest),
            server,
        )
    else:
        log.warning(
            "%s's certificate is not valid at this device's time (%s): taking the time from it",
            server,
            iso(now),
        )
    try:
        return correct_from_server(host, server, ca_fingerprint)
    except ClockError as e:
        log.warning("clock not corrected: %s", e)
        return False
