"""The agent daemon: register, then pull the spec, reconcile, and report, forever.

One :class:`Agent` is a few asyncio tasks and no threads of its own, so a process can run
thousands (the simulator does, each on a ``SimulatedHost``). The same code runs on a real
device under systemd (``corral-agent run``).

What wakes the agent:
- a nudge over MQTT whose generation is newer than the spec it has → pull;
- the poll timer (jittered; shorter while MQTT is down) → pull, reconcile (drift);
- a reconcile that failed → retry with backoff;
- a reconcile pass that ended → the next one, when a pull came in meanwhile;
- an acknowledgement (``Nudge.acked_seq``, ``StatusAck``) → drop events from the outbox.

A pass runs as its own task, one at a time, so pulls go on while a reconciler works (a
K3s install, an OS image download). A pull that brings a newer generation supersedes the
running pass: it is cancelled at a safe point (not inside ``ReconcileContext.critical``),
and a new pass starts with the newer spec. Each reconciler's steps are safe to repeat.
Stopping the agent cancels a running pass outright.

Every status event goes to the durable outbox before it is sent. It is sent over MQTT when
connected and over HTTPS when not, or when MQTT does not acknowledge it in time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_image.agent import clock, memory
from node_image.agent.context import ReconcileContext, Supersede, run_reconcile
from node_image.agent.mqtt import ChannelDown, MqttChannel, MqttSettings
from node_image.agent.outbox import Outbox
from node_image.agent.reconcilers import REGISTRY, Reconciler, build
from node_image.agent.renew import keep_renewed
from node_image.agent.seed import Seed
from node_image.agent.settings import AgentSettings, AgentStatus, Identity
from node_image.agent.state import StateDir, read_json
from node_image.agent.transport import ApiClient, ApiError, Backoff, client_tls, jittered
from node_image.agent.worker import Link, Pass, Timers, wait_event
from node_image.boot import RebootRequested
from node_image.errors import AgentError
from node_image.host import Host
from registration.desired import Condition, Nudge, SpecDocument, StatusBatch
from registration.document import ValidationError

if TYPE_CHECKING:
    from node_image.agent import register as register_mod

__all__ = ["Agent", "AgentSettings", "AgentStatus", "Identity"]

log = logging.getLogger(__name__)


class Agent:
    """A device agent. ``await run()`` until ``await stop()``.

    ``state_dir`` holds identity, spec, outbox and reconciler state; ``host`` is the
    machine it manages; ``seed`` is needed only to register a device that has no identity.
    """

    def __init__(
        self,
        state_dir: Path,
        host: Host,
        seed: Seed | None = None,
        settings: AgentSettings | None = None,
    ) -> None:
        self.host = host
        self.settings = settings or AgentSettings()
        self.state = StateDir(state_dir, fsync=host.durable)
        self._seed = seed
        self._identity: Identity | None = None
        registry = self.settings.reconcilers or REGISTRY
        self._reconcilers: list[Reconciler] = build(self.state, registry)
        self._link: Link | None = None
        self._spec: SpecDocument | None = None
        self._etag: str | None = None
        self._status = AgentStatus()
        #: A reconciler reported an interim condition since the last full report: the pass's
        #: final conditions are reported even when they equal ``_status``'s.
        self._interim = False
        self._nudge_acked = 0
        self._pull_now = True
        #: A pull succeeded since the last pass started: reconcile (again).
        self._reconcile_due = False
        self._pass: Pass | None = None
        #: Work was done since the memory it freed was last given back (see ``memory``).
        self._worked = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._wake = asyncio.Event()
        self._flush = asyncio.Event()
        self._acked = asyncio.Event()
        self._changed = asyncio.Condition()
        self._report_lock = asyncio.Lock()
        s = self.settings
        self._timers = Timers(
            pull_backoff=Backoff(s.http_backoff_base, s.http_backoff_cap, s.jitter),
            retry_backoff=Backoff(s.retry_backoff_base, s.retry_backoff_cap, s.jitter),
        )

    # --- what callers see -------------------------------------------------------------

    @property
    def device_id(self) -> str | None:
        return self._identity.device_id if self._identity else None

    @property
    def status(self) -> AgentStatus:
        return self._status

    @property
    def mqtt_connected(self) -> bool:
        link = self._link
        return link is not None and link.mqtt is not None and link.mqtt.connected

    @property
    def pending_events(self) -> int:
        """Status events not yet acknowledged by the server."""
        return len(self._link.outbox) if self._link else 0

    @property
    def acked_seq(self) -> int:
        return self._link.outbox.acked_seq if self._link else 0

    def pull(self) -> None:
        """Pull the spec and reconcile now, as a nudge would."""
        self._pull_now = True
        self._wake.set()

    async def wait_for_generation(self, generation: int, *, acked: bool = False) -> AgentStatus:
        """Wait until a reconcile of ``generation`` or later has finished (whatever its
        outcome: see ``AgentStatus.ok``); with ``acked``, also until the server has
        acknowledged the status event that reported it."""

        def reached() -> bool:
            status = self._status
            if status.observed_generation < generation or status.seq == 0:
                return False
            return not acked or self.acked_seq >= status.seq

        async with self._changed:
            await self._changed.wait_for(reached)
            return self._status

    async def stop(self) -> None:
        """Stop: presence offline, disconnect, return once :meth:`run` has returned."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    # --- the daemon -------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise AgentError("this agent is already running")
        if self._stopping.is_set():
            return
        self._running = True
        self._stopped.clear()
        tasks: list[asyncio.Task[Any]] = []
        try:
            identity = await self._ensure_identity()
            if identity is None:
                return
            link = self._link = await self._open(identity)
            name = identity.device_id
            tasks = [
                asyncio.create_task(self._worker(link), name=f"agent-worker-{name}"),
                asyncio.create_task(self._flusher(link), name=f"agent-flusher-{name}"),
                asyncio.create_task(
                    keep_renewed(self.state, name, link.api, link.mqtt), name=f"agent-renew-{name}"
                ),
            ]
            if link.mqtt is not None:
                tasks.append(asyncio.create_task(link.mqtt.run(), name=f"agent-mqtt-{name}"))
            stopping = asyncio.create_task(self._stopping.wait())
            tasks.append(stopping)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is stopping or task.cancelled():
                    continue
                if (error := task.exception()) is not None:
                    if isinstance(error, RebootRequested):  # the host is going down
                        raise error
                    raise AgentError(f"{task.get_name()} failed: {error!r}") from error
        finally:
            await self._close(tasks)
            self._running = False
            self._stopped.set()

    async def _ensure_identity(self) -> Identity | None:
        """The device identity; registers first when there is none. None if stopped."""
        await asyncio.to_thread(self.state.ensure)
        backoff = Backoff(5.0, self.settings.register_backoff_cap, self.settings.jitter)
        while (identity := await asyncio.to_thread(Identity.load, self.state)) is None:
            if self._seed is None:
                raise AgentError(f"{self.state.root} holds no identity and no seed was given")
            try:
                result = await asyncio.to_thread(self._register, self._seed)
            except AgentError as e:
                delay = backoff.next()
                log.warning("registration failed: %s; retrying in %.0fs", e, delay)
                if await wait_event(self._stopping, delay):
                    return None
                continue
            log.info("registered as %s (%s)", result.device_id, result.name)
        self._identity = identity
        return identity

    def _register(self, seed: Seed) -> register_mod.Result:
        from node_image.agent import firstboot  # cryptography: only to register

        return firstboot.register_once(seed, self.state, self.host)

    def _recover_clock(self, server: str, error: ApiError) -> bool:
        """TLS refused the server's certificate for its dates: set the clock from the server
        (over the CA pinned at registration) when it is off. True if it was set (blocking)."""
        if not clock.is_date_error(error):
            return False
        from registration import identity  # cryptography: only when the clock is wrong

        pinned = identity.fingerprint(identity.cert_from_pem(self.state.ca.read_bytes()))
        return clock.recover(self.host, server, pinned, error)

    async def _open(self, identity: Identity) -> Link:
        s = self.settings
        context = await asyncio.to_thread(
            client_tls, self.state.ca, self.state.cert, self.state.key
        )
        outbox = await asyncio.to_thread(Outbox.open, self.state.outbox, fsync=self.state.fsync)
        await asyncio.to_thread(self._load_state)
        if self._spec is not None:
            self._timers.retry_at = time.monotonic()  # re-apply the saved spec even offline
        if len(outbox):
            self._flush.set()  # events a previous run could not deliver
        mqtt = None
        if s.mqtt and identity.mqtt:
            mqtt = MqttChannel(
                identity.device_id,
                identity.mqtt,
                context,
                on_nudge=self._on_nudge,
                on_state=self._on_mqtt_state,
                settings=MqttSettings(
                    keepalive=s.mqtt_keepalive,
                    timeout=s.mqtt_timeout,
                    backoff_base=s.mqtt_backoff_base,
                    backoff_cap=s.mqtt_backoff_cap,
                ),
            )
        api = ApiClient(identity.api, identity.device_id, context, s.http_timeout)
        return Link(identity, api, outbox, mqtt)

    def _load_state(self) -> None:
        """What the last run pulled and reported (blocking)."""
        spec = read_json(self.state.spec)
        if isinstance(spec, dict):
            try:
                self._spec = SpecDocument.model_validate(spec["document"])
                self._etag = spec.get("etag")
            except (KeyError, ValidationError) as e:
                log.warning("ignored the saved spec %s: %s", self.state.spec, e)
        agent = read_json(self.state.agent)
        if isinstance(agent, dict):
            try:
                self._status = AgentStatus(
                    observed_generation=int(agent["observed_generation"]),
                    conditions=tuple(Condition.model_validate(c) for c in agent["conditions"]),
                    seq=int(agent["seq"]),
                )
            except (KeyError, TypeError, ValueError, ValidationError) as e:
                log.warning("ignored the saved status %s: %s", self.state.agent, e)

    async def _close(self, tasks: list[asyncio.Task[Any]]) -> None:
        link = self._link
        if link is not None and link.mqtt is not None:
            await link.mqtt.announce_offline()
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except (Exception, RebootRequested) as e:  # already raised from run(); logged
                log.debug("%s ended: %s", task.get_name(), e)
        if link is not None:
            await link.api.close()

    # --- events from MQTT -------------------------------------------------------------

    def _on_nudge(self, nudge: Nudge) -> None:
        if self._spec is None or nudge.generation > self._spec.generation:
            self.pull()
        if nudge.acked_seq > self._nudge_acked:
            self._nudge_acked = nudge.acked_seq
            self._acked.set()
            self._flush.set()

    def _on_mqtt_state(self, connected: bool) -> None:
        self._wake.set()  # the poll interval changes
        if connected:
            self._flush.set()

    # --- pull and reconcile -----------------------------------------------------------

    def _next_pull(self) -> float:
        t = self._timers
        interval = (
            self.settings.poll_interval_connected
            if self.mqtt_connected
            else self.settings.poll_interval
        )
        return max(t.last_pull + interval * t.pull_factor, t.pull_blocked_until)

    async def _worker(self, link: Link) -> None:
        t = self._timers
        try:
            while True:
                self._end_pass()
                now = time.monotonic()
                # A pass may start: none runs, and a pull or the retry timer asks for one.
                retry_at = t.retry_at if self._spec is not None and not self._pass else math.inf
                ready = retry_at <= now or (self._reconcile_due and self._pass is None)
                if not self._pull_now and now < self._next_pull() and not ready:
                    if self._worked and self._pass is None:  # idle: give freed memory back
                        self._worked = False
                        memory.release()
                    await wait_event(self._wake, min(self._next_pull(), retry_at) - now)
                    self._wake.clear()
                    continue
                self._worked = True
                try:
                    if await self._pull_if_due(link):
                        self._reconcile_due = True
                except OSError as e:
                    self._state_error(e)
                self._start_pass(link)
        finally:
            running, self._pass = self._pass, None
            if running is not None:
                await running.cancel()  # stopping

    def _start_pass(self, link: Link) -> None:
        """Supersede a pass of an older generation; start a pass if one is due and none runs."""
        spec, running = self._spec, self._pass
        if spec is None:
            return
        if running is not None:
            if spec.generation > running.generation:
                log.info(
                    "generation %s supersedes the pass of %s", spec.generation, running.generation
                )
                running.supersede.request()
            return
        if not self._reconcile_due and time.monotonic() < self._timers.retry_at:
            return
        self._reconcile_due = False
        supersede = Supersede()
        task = asyncio.create_task(
            self._reconcile(link, spec, supersede), name=f"agent-pass-{spec.generation}"
        )
        supersede.bind(task)
        task.add_done_callback(lambda _: self._wake.set())
        self._pass = Pass(task, spec.generation, supersede)

    def _end_pass(self) -> None:
        """Collect a pass that ended: a superseded one starts anew, ``RebootRequested`` and
        bugs pass out of the worker, a state directory that cannot be written backs off."""
        running = self._pass
        if running is None or not running.task.done():
            return
        self._pass = None
        if running.task.cancelled():
            self._reconcile_due = True  # superseded: reconcile the newer spec
            return
        error = running.task.exception()
        if isinstance(error, OSError):
            self._state_error(error)
        elif error is not None:
            raise error

    def _state_error(self, e: OSError) -> None:
        # The state directory cannot be written (full, read-only): keep going.
        delay = self._timers.retry_later()
        log.error("cannot write state in %s: %s; retrying in %.0fs", self.state.root, e, delay)

    async def _pull_if_due(self, link: Link) -> bool:
        """Pull when asked to or when the poll timer says so; True if a pull succeeded."""
        t = self._timers
        now = time.monotonic()
        if not self._pull_now and now < self._next_pull():
            return False
        self._pull_now = False
        t.last_pull = now
        t.pull_factor = jittered(1.0, self.settings.jitter)
        try:
            await self._pull(link)
        except ApiError as e:
            if await asyncio.to_thread(self._recover_clock, link.identity.api, e):
                self._pull_now = True  # the clock was wrong: try again at once
                return False
            delay = t.pull_backoff.next()
            t.pull_blocked_until = time.monotonic() + delay
            log.warning("spec pull failed: %s; next try in %.0fs", e, delay)
            return False
        t.pull_backoff.reset()
        t.pull_blocked_until = -math.inf
        return True

    async def _pull(self, link: Link) -> None:
        pulled = await link.api.get_spec(self._etag if self._spec is not None else None)
        if pulled is None:
            return
        document = pulled.document
        if self._spec is None or (document, pulled.etag) != (self._spec, self._etag):
            body = {"etag": pulled.etag, "document": document.model_dump(mode="json")}
            await asyncio.to_thread(self.state.write_json, self.state.spec, body, 0o600)
            if self._spec is None or document.generation != self._spec.generation:
                log.info("pulled spec generation %s", document.generation)
        self._spec, self._etag = document, pulled.etag
        if document.acked_seq > self._nudge_acked:
            self._nudge_acked = document.acked_seq
            self._acked.set()
            self._flush.set()

    async def _reconcile(self, link: Link, document: SpecDocument, supersede: Supersede) -> None:
        conditions = [await self._run_one(r, document, supersede) for r in self._reconcilers]
        status = self._status
        if self._interim or not status.same_report(document.generation, conditions):
            status = await self._report(link, document.generation, conditions)
        self._interim = False
        t = self._timers
        if all(c.status != "Error" for c in conditions):
            t.retry_backoff.reset()
            t.retry_at = math.inf
        else:
            delay = t.retry_later()
            log.info("generation %s not converged; retrying in %.0fs", document.generation, delay)
        async with self._changed:
            self._status = status
            self._changed.notify_all()

    async def _run_one(
        self, reconciler: Reconciler, document: SpecDocument, supersede: Supersede
    ) -> Condition:
        link = self._link
        ctx = ReconcileContext(
            reconciler.name,
            self.host,
            self.state,
            report=functools.partial(self._report_interim, link, document.generation)
            if link
            else None,
            outbox=link.outbox if link else None,
            api=link.api if link else None,
            supersede=supersede,
        )
        return await run_reconcile(reconciler, document.spec, ctx)

    async def _report_interim(self, link: Link, generation: int, condition: Condition) -> None:
        """A reconciler's condition before its pass ends (``Progressing``, ``Modified``),
        reported with the other conditions as last reported."""
        last = list(self._status.conditions)
        conditions = [condition if c.type == condition.type else c for c in last]
        if condition not in conditions:
            conditions.append(condition)
        self._interim = True
        await self._report(link, generation, conditions)

    async def _report(
        self, link: Link, generation: int, conditions: list[Condition]
    ) -> AgentStatus:
        """Durably queue a status event (outbox first), then remember it was reported.

        Shielded: a pass that is superseded or stopped meanwhile does not leave the outbox
        to a thread still appending while the next report appends too.
        """
        return await asyncio.shield(self._queue_report(link, generation, conditions))

    async def _queue_report(
        self, link: Link, generation: int, conditions: list[Condition]
    ) -> AgentStatus:
        async with self._report_lock:
            event = await asyncio.to_thread(link.outbox.append, generation, conditions)
            status = AgentStatus(generation, tuple(conditions), event.seq)
            body = {
                "observed_generation": generation,
                "conditions": [c.model_dump(mode="json") for c in conditions],
                "seq": event.seq,
            }
            await asyncio.to_thread(self.state.write_json, self.state.agent, body)
        log.info(
            "generation %s: %s (status event %s)",
            generation,
            ", ".join(f"{c.type}={c.status}" for c in conditions),
            event.seq,
        )
        self._flush.set()
        return status

    # --- sending the outbox -----------------------------------------------------------

    async def _flusher(self, link: Link) -> None:
        s = self.settings
        backoff = Backoff(s.http_backoff_base, s.http_backoff_cap, s.jitter)
        while True:
            await self._flush.wait()
            self._flush.clear()
            try:
                await self._apply_acks(link)
                delivered = await self._send_pending(link)
            except OSError as e:  # the outbox file cannot be rewritten
                log.error("cannot update the outbox %s: %s", link.outbox.path, e)
                delivered = False
            if delivered:
                backoff.reset()
                memory.release()
                continue
            delay = backoff.next()
            log.warning("status not delivered; retrying in %.0fs", delay)
            await wait_event(self._flush, delay)
            self._flush.set()

    async def _send_pending(self, link: Link) -> bool:
        """Send the outbox until it is empty; False when a batch could not be delivered."""
        while events := link.outbox.pending(self.settings.batch_size):
            batch = StatusBatch(events=events)
            last = events[-1].seq
            if link.mqtt is not None and link.mqtt.connected:
                try:
                    await link.mqtt.publish_status(batch)
                    if await self._wait_acked(link, last, self.settings.ack_timeout):
                        continue
                    log.info("status %s not acknowledged over MQTT; sending over HTTPS", last)
                    # The ack rides on a nudge: a session that does not bring it may bring
                    # no nudge either (a dead link, a broker that queues for it instead).
                    link.mqtt.reconnect(f"status {last} not acknowledged")
                except ChannelDown as e:
                    log.info("%s; sending over HTTPS", e)
                    link.mqtt.reconnect(str(e))
            try:
                ack = await link.api.post_status(batch)
            except ApiError as e:
                log.warning("status not delivered over HTTPS: %s", e)
                return False
            await self._apply_ack(link, ack.acked_seq)
            if link.outbox.acked_seq < last:
                log.warning(
                    "server acknowledged up to %s of %s..%s", ack.acked_seq, events[0].seq, last
                )
                return False
        return True

    async def _wait_acked(self, link: Link, seq: int, seconds: float) -> bool:
        """Wait up to ``seconds`` for the server to acknowledge ``seq`` over MQTT."""
        deadline = time.monotonic() + seconds
        while True:
            # Cleared before looking: an ack that comes in while the outbox is being
            # updated sets it again, and is not slept through.
            self._acked.clear()
            await self._apply_acks(link)
            if link.outbox.acked_seq >= seq:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await wait_event(self._acked, remaining)

    async def _apply_acks(self, link: Link) -> None:
        if self._nudge_acked > link.outbox.acked_seq:
            await self._apply_ack(link, self._nudge_acked)

    async def _apply_ack(self, link: Link, acked_seq: int) -> None:
        self._nudge_acked = max(self._nudge_acked, acked_seq)
        result = await asyncio.to_thread(link.outbox.ack, acked_seq)
        if result.ahead and self._status.seq:
            # The server is past every seq we assigned: report the current status anew.
            status = self._status
            self._status = await self._report(
                link, status.observed_generation, list(status.conditions)
            )
        async with self._changed:
            self._changed.notify_all()
