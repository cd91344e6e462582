"""The stack a bench runs against: the tests' :class:`~tests.server_process.Server` (``corral
serve`` of this tree, embedded broker or Mosquitto) in a throw-away directory, without the
test-only blocking-call guard; the bench group and its token; what the server shows, read
from its database without costing it anything.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procstat import rss_kib
from bench.report import log
from tests.server_process import Server

GROUP = "fleet"
SELECTOR = "bench=fleet"
LABELS = {"bench": "fleet"}
FILE_PATH = "/etc/bench/generation"
STOP_SECONDS = 60  # a server or Mosquitto with thousands of sessions takes a while to stop


def file_spec(content: str) -> dict[str, Any]:
    """A group spec of one config file, ``FILE_PATH``, with ``content``."""
    return {"config": [{"path": FILE_PATH, "mode": 0o644, "content": content}]}


class Stack:
    """``corral serve`` (+ Mosquitto) on 127.0.0.1 free ports, data in a throw-away dir
    (kept with ``FLEET_KEEP=1``). A context manager: ``with Stack() as stack:`` starts it."""

    def __init__(self, broker: str = "embedded", env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="corral-bench-"))
        self.server = Server(
            data_dir=self.root / "data", env=env or {}, broker=broker, guard_blocking=False
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def start(self, timeout: float = 60) -> None:
        """Start (Mosquitto first, if it is the broker) and wait for the server's channel."""
        self.server.start(timeout)
        self.server.wait_channel(timeout)

    def close(self) -> None:
        self.server.stop(STOP_SECONDS)
        if self.server.mosquitto is not None:
            self.server.mosquitto.stop(STOP_SECONDS)
        problems = self.server.log().count("Traceback")
        if problems:
            log(f"server log has {problems} traceback(s); tail:\n{self.server.log()[-3000:]}")
        if os.environ.get("FLEET_KEEP"):
            log(f"kept {self.root} (FLEET_KEEP)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes

    @property
    def mosquitto_pid(self) -> int | None:
        mosquitto = self.server.mosquitto
        return mosquitto.proc.pid if mosquitto is not None and mosquitto.proc else None

    def pids(self) -> list[int]:
        """The server's and Mosquitto's, of those running."""
        pids = [self.server.proc.pid] if self.server.proc else []
        return pids + ([self.mosquitto_pid] if self.mosquitto_pid else [])

    def server_rss(self) -> int:
        return rss_kib(self.server.pid)

    def broker_rss(self) -> int | None:
        return rss_kib(self.mosquitto_pid) if self.mosquitto_pid else None

    # --- the API

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One call as the admin: (status, JSON answer)."""
        response = self.server.api(method, path, body, timeout=600)
        return response.status_code, response.json() if response.content else None

    def create_fleet_group(self, spec: dict[str, Any]) -> str:
        """The bench group and a reusable token whose devices it selects; returns the token."""
        body = {"name": GROUP, "selector": SELECTOR, "spec": spec}
        self.server.checked("POST", "/api/v1/groups", body, timeout=600)
        token = self.server.checked(
            "POST",
            "/api/v1/tokens",
            {"group": GROUP, "labels": LABELS, "max_uses": None, "ttl_seconds": 24 * 3600},
        )
        return str(token["token"])

    def set_group_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """PATCH the group's spec (what ``corral group set`` does); the server answers after
        recomputing every spec and publishing every nudge."""
        path = f"/api/v1/groups/{GROUP}"
        answer: dict[str, Any] = self.server.checked("PATCH", path, {"spec": spec}, timeout=600)
        return answer

    def devices(self) -> list[dict[str, Any]]:
        """Every device as ``corral device list -o json`` shows it."""
        items: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self.server.checked("GET", f"/api/v1/devices?limit=1000{after}", timeout=600)
            items += page["items"]
            if not page["next"]:
                return items
            after = f"&after={page['next']}"

    def offline_group_spec(self, spec: dict[str, Any]) -> int:
        """Change the group's spec while the server is stopped, with the server's own code
        and in one transaction, as the API's PATCH does: the group row, then every device's
        spec recomputed and its generation bumped. Returns the devices changed."""
        assert self.server.proc is None, "stop the server first"
        from edge_server import specs
        from edge_server.store import connect
        from edge_server.store import groups as groups_store
        from registration.desired import SpecPatch

        patch = SpecPatch.model_validate(spec).model_dump(exclude_none=True)
        db = connect(self.server.db_path)
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            if not groups_store.update(db, GROUP, spec=patch):
                raise RuntimeError(f"no group {GROUP}")
            changes = specs.recompute(db)
            db.conn.execute("COMMIT")
        finally:
            db.conn.close()
        return len(changes)

    # --- what the server shows, read-only from its database (costs the server nothing)

    def converged(self, generation: int) -> int:
        """Devices whose observed generation the server has recorded as ``generation``."""
        conn = sqlite3.connect(f"file:{self.server.db_path}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(
                "SELECT count(*) FROM device_state WHERE observed_generation >= ?", (generation,)
            ).fetchone()
            return int(row[0])
        finally:
            conn.close()


@dataclass
class Convergence:
    """When the server's database showed how many devices at a generation (monotonic)."""

    started: float
    series: list[tuple[float, int]] = field(default_factory=list)

    @property
    def done(self) -> float:
        return self.series[-1][0]

    def at_share(self, share: float) -> float:
        """Seconds from ``started`` until ``share`` of the devices were shown (by the poll)."""
        n = self.series[-1][1]
        for t, count in self.series:
            if count >= share * n:
                return t - self.started
        return float("nan")

    def shape(self) -> str:
        return (
            "server shows 1%/10%/50%/90%/100% at "
            + "/".join(f"{self.at_share(q):.2f}" for q in (0.01, 0.1, 0.5, 0.9, 1.0))
            + " s"
        )


async def wait_converged(
    stack: Stack,
    generation: int,
    n: int,
    within: float,
    interval: float = 0.05,
    started: float | None = None,
) -> Convergence:
    """Poll the server's database until ``n`` devices show ``generation``. Raises
    TimeoutError with the count reached."""
    progress = Convergence(time.monotonic() if started is None else started)
    deadline = time.monotonic() + within
    last_report = time.monotonic()
    while True:
        seen = await asyncio.to_thread(stack.converged, generation)
        now = time.monotonic()
        progress.series.append((now, seen))
        if seen >= n:
            return progress
        if now > deadline:
            raise TimeoutError(f"{seen}/{n} devices at generation {generation} after {within}s")
        if now - last_report > 10:
            log(f"  {seen}/{n} at generation {generation}")
            last_report = now
        await asyncio.sleep(interval)
