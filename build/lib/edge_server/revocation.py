"""Revocation beyond HTTPS: the embedded broker asks the store itself; an external broker
reads a CRL, which :class:`CrlWriter` rewrites after each revocation commits.

The rewrite is **serial** (one lock: two rewrites never interleave, so an older list can
never land after a newer one), **coalesced** (callers that asked while a rewrite was
running share the next one) and **atomic and durable** (``pki.write_public``: a temp file
of its own in the same directory, fsync, rename, fsync of the directory). A rewrite reads
the deny-list after the caller's commit, so when :meth:`CrlWriter.refresh` returns the file
on disk lists the caller's serials.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from edge_server import mosquitto
from edge_server.ops import devices as device_ops
from edge_server.pki import write_public
from edge_server.store import Store
from registration.identity import CertificateAuthority

log = logging.getLogger(__name__)


class CrlWriter:
    def __init__(self, path: Path, ca: CertificateAuthority) -> None:
        self.path = path
        self._ca = ca
        self._lock = asyncio.Lock()
        self._asked = 0  # refresh() calls so far
        self._done = 0  # calls whose commits the file on disk reflects

    async def refresh(self, store: Store) -> None:
        """Rewrite the CRL from the deny-list. Call it after the revocation committed."""
        self._asked += 1
        ticket = self._asked
        async with self._lock:
            if self._done >= ticket:
                return  # a rewrite that started after our commit has finished
            covers = self._asked  # every caller so far committed before this read
            serials = await device_ops.revoked_serials(store)
            try:
                await asyncio.to_thread(self._write, serials)
            except OSError as e:
                # The deny-list in the database holds (HTTPS and the embedded broker use
                # it); the next revocation rewrites the file again.
                log.error("could not write the CRL %s: %s", self.path, e)
                return
            self._done = covers
        log.info(
            "wrote CRL with %d serial(s) to %s (the session control reloads Mosquitto)",
            len(serials),
            self.path,
        )

    def _write(self, serials: list[int]) -> None:
        write_public(self.path, mosquitto.make_crl(self._ca, serials))
