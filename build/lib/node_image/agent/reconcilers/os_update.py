"""The ``os`` reconciler: signed A/B OS updates with a boot counter, a health check and
rollback.

An update is a flat list of named steps. Each one persists, before the next starts, which
step comes next (``reconcilers/os.json``), so a restart or a power cut at any point resumes
at the step it stopped in; every step can run twice.

Before the reboot (:data:`UPDATE_STEPS`):

1. ``download``: the image into ``<state>/downloads`` (HTTP Range resume; the size and the
   signed sha256 checked while streaming). The signature (ed25519, the update-signing key
   pinned at registration) and the version were checked before: an unsigned, tampered or
   older image is refused and nothing is written.
2. ``write``: the running slot is made GRUB's default first (any older try of the other slot
   is forgotten, so a half-written slot is never booted), then the image is streamed into
   the inactive slot.
3. ``verify``: the slot is read back from the disk; its sha256 must be the signed one.
4. ``arm``: the new slot boots next, with :data:`TRIES` tries (``corral_next``/``corral_tries``;
   ``grub.cfg`` takes one before each boot of it).
5. ``reboot``: the outbox is made durable, then the machine reboots.

After the boot (:data:`BOOT_STEPS`):

6. ``health-check``: the agent is up (it runs this); the server is reachable, or the wait for
   it timed out (a device may well come back offline: that alone never rolls back); the K3s
   node is Ready when the spec wants K3s; and the image's own ``/etc/corral/health-check``,
   read from the booted slot and run through ``Host.run``, exits 0.
7. ``mark-good``: the booted slot becomes GRUB's default.
8. ``report``: ``Healthy`` with the new version.

A failed check makes the old slot the default again and reboots into it (``rollback``); a
new slot that never comes up uses up its tries and GRUB boots the old one. Either way the
agent reports ``RolledBack`` with the reason, and does not try that image again until the
spec names another one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urljoin, urlsplit

from node_image import boot
from node_image.agent import crashpoints
from node_image.agent.context import ReconcileContext
from node_image.agent.download import DownloadError
from node_image.agent.state import StateDir, read_json
from node_image.blockwrite import file_chunks
from node_image.commands import CommandError
from node_image.errors import AgentError
from node_image.host import Host
from registration import artifacts
from registration.artifacts import ArtifactRef
from registration.desired import Condition, ConditionStatus, Spec

log = logging.getLogger(__name__)

NAME = "os"
#: Boots of the new slot GRUB allows before it falls back to the old one.
TRIES = 3
#: Inside the image: a program that exits 0 when the new system is healthy.
HEALTH_CHECK = "/etc/corral/health-check"
#: On the running root: the version of the OS the device was installed with.
OS_VERSION_FILE = "/etc/corral/os-version"

UPDATE_STEPS = ("download", "write", "verify", "arm", "reboot")
BOOT_STEPS = ("health-check", "mark-good", "report")
#: Every point where the power-loss test kills the agent (``crashpoints``), in order.
CRASH_POINTS = tuple(
    f"{NAME}:{s}"
    for s in (*UPDATE_STEPS[:2], "write-half", *UPDATE_STEPS[2:], *BOOT_STEPS, "rollback")
)


@dataclass(frozen=True)
class HealthSettings:
    """How long the after-boot checks may take."""

    server_timeout: float = 60.0
    k3s_timeout: float = 300.0
    script_timeout: float = 300.0
    poll: float = 2.0


@dataclass
class Pending:
    """An update in flight: the image, the slots, and the step to run next."""

    version: str
    sha256: str
    size: int
    slot: str
    from_slot: str
    step: str
    #: The boot the reboot was asked from (a different one means the machine rebooted).
    boot_id: str = ""
    reason: str = ""


@dataclass
class OsState:
    #: The version the good slot runs ("" until known).
    installed: str = ""
    #: What each slot holds: ``{"A": {"version": ..., "sha256": ...}}``.
    slots: dict[str, dict[str, str]] = field(default_factory=dict)
    pending: Pending | None = None
    #: The last image that did not end Healthy: ``{"sha256", "status", "reason", "message"}``.
    failed: dict[str, str] = field(default_factory=dict)


_UpdateStep = Callable[[OsState, Pending, ArtifactRef, ReconcileContext], Awaitable[None]]
_BootStep = Callable[[OsState, Pending, Spec, ReconcileContext], Awaitable[None]]


class Refused(AgentError):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class OsUpdateReconciler:
    name = NAME

    def __init__(self, state: StateDir, health: HealthSettings | None = None) -> None:
        self._state = state
        self._path = state.reconciler(NAME)
        self.health = health or HealthSettings()
        self._update_steps: dict[str, _UpdateStep] = {
            "download": self._download,
            "write": self._write,
            "verify": self._verify,
            "arm": self._arm,
            "reboot": self._reboot,
        }
        self._boot_steps: dict[str, _BootStep] = {
            "health-check": self._health_check,
            "mark-good": self._mark_good,
            "report": self._report,
        }
        assert tuple(self._update_steps) == UPDATE_STEPS  # noqa: S101 - one list of steps
        assert tuple(self._boot_steps) == BOOT_STEPS  # noqa: S101

    # --- the procedure ----------------------------------------------------------------

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        condition = await self._reconcile(spec, ctx)
        # Every answer carries the installed version (device show/list show it).
        st = await asyncio.to_thread(self.load, ctx.host)
        return condition.model_copy(update={"version": st.installed or None})

    async def _reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        st = await asyncio.to_thread(self.load, ctx.host)
        if st.pending is not None:
            return await self._resume(st, st.pending, spec, ctx)
        want = spec.os
        if want.version is None:
            return self._condition("Applied", "NotManaged", f"os {st.installed or 'unknown'}")
        if want.version == st.installed:
            return self._healthy(st)
        ref = want.image
        if ref is None:
            return self._condition("Pending", "NoImage", f"no image for {want.version} yet")
        try:
            await asyncio.to_thread(self.check, ref, want.version, st, bool(want.allow_downgrade))
        except Refused as e:  # checked anew each pass: the spec or the pinned key may change
            log.warning("os: refused %s: %s", ref.version, e)
            return self._condition("Refused", e.reason, str(e))
        if st.failed.get("sha256") == ref.sha256:  # this image failed before: not again
            status = cast(ConditionStatus, st.failed["status"])
            return self._condition(status, st.failed["reason"], st.failed["message"])
        booted = await asyncio.to_thread(ctx.host.active_slot)
        st.pending = Pending(
            ref.version, ref.sha256, ref.size, boot.other_slot(booted), booted, UPDATE_STEPS[0]
        )
        await asyncio.to_thread(self.save, st)
        log.info("os: updating %s → %s", st.installed or "unknown", ref.version)
        return await self._resume(st, st.pending, spec, ctx)

    async def _resume(
        self, st: OsState, p: Pending, spec: Spec, ctx: ReconcileContext
    ) -> Condition:
        """Run the update from the step it stopped at."""
        host = ctx.host
        booted = await asyncio.to_thread(host.active_slot)
        env = await asyncio.to_thread(host.read_grubenv)
        if p.step == "rollback":
            return await self._rollback(st, p, ctx, booted)
        if p.step in UPDATE_STEPS and UPDATE_STEPS.index(p.step) >= UPDATE_STEPS.index("arm"):
            if booted == p.slot:  # GRUB is trying the new slot: the machine rebooted
                p.step = BOOT_STEPS[0]
            elif env.get(boot.NEXT) == p.slot and env.get(boot.TRIES) == "0":
                return await self._rolled_back(
                    st, p, ctx, f"slot {p.slot} did not come up in {TRIES} tries"
                )
            elif p.step == "reboot" and await asyncio.to_thread(host.boot_id) != p.boot_id:
                return await self._rolled_back(
                    st, p, ctx, f"the machine rebooted into slot {booted}, not {p.slot}"
                )
        ref = spec.os.image
        if p.step in UPDATE_STEPS and (ref is None or ref.sha256 != p.sha256):
            # The spec moved on before the new slot was tried: drop this update.
            log.info("os: the spec no longer wants %s; dropping the update", p.version)
            await asyncio.to_thread(self._disarm, host, p.from_slot)
            st.pending = None
            await asyncio.to_thread(self.save, st)
            return await self.reconcile(spec, ctx)
        try:
            if p.step in UPDATE_STEPS:
                assert ref is not None  # noqa: S101 - checked just above
                for step in UPDATE_STEPS[UPDATE_STEPS.index(p.step) :]:
                    await self._step(st, p, step)
                    await self._update_steps[step](st, p, ref, ctx)
                    self._advance(p, UPDATE_STEPS)
                    await asyncio.to_thread(self.save, st)
            for step in BOOT_STEPS[BOOT_STEPS.index(p.step) :]:
                await self._step(st, p, step)
                await self._boot_steps[step](st, p, spec, ctx)
                if st.pending is None:
                    break
                self._advance(p, BOOT_STEPS)
                await asyncio.to_thread(self.save, st)
        except _HealthFailed as e:
            p.step, p.reason = "rollback", str(e)
            await asyncio.to_thread(self.save, st)
            return await self._rollback(st, p, ctx, booted)
        except Refused as e:  # the download was not the signed image
            await asyncio.to_thread(self._disarm, host, p.from_slot)
            return await self._refuse(st, p, e)
        except DownloadError as e:
            return self._condition("Error", e.reason, str(e))
        except (AgentError, OSError) as e:
            log.warning("os: update to %s failed at %s: %s", p.version, p.step, e)
            await asyncio.to_thread(self.save, st)  # the step to retry (verify → write)
            return self._condition("Error", "UpdateFailed", f"{p.step}: {e}")
        return self._healthy(st)

    # --- before the reboot ------------------------------------------------------------

    async def _download(
        self, st: OsState, p: Pending, ref: ArtifactRef, ctx: ReconcileContext
    ) -> None:
        url = await asyncio.to_thread(self._url, ref)
        try:
            await ctx.download(
                url, self._image(ctx, p), ref.sha256, ref.size, what=f"os {p.version}"
            )
        except DownloadError as e:
            if e.reason in ("Sha256Mismatch", "SizeMismatch"):
                raise Refused("Tampered", f"os image {p.version}: {e}") from e
            raise

    async def _write(
        self, st: OsState, p: Pending, ref: ArtifactRef, ctx: ReconcileContext
    ) -> None:
        host = ctx.host
        await asyncio.to_thread(self._disarm, host, p.from_slot)
        st.slots.pop(p.slot, None)  # whatever it held is being overwritten
        await asyncio.to_thread(self.save, st)
        await ctx.progress(None, "Writing", f"os {p.version} to slot {p.slot}")
        written = await asyncio.to_thread(host.write_slot, p.slot, _halfway(self._image(ctx, p)))
        if (written.size, written.sha256) != (p.size, p.sha256):
            raise AgentError(f"wrote {written.size} bytes, sha256 {written.sha256}: not the image")

    async def _verify(
        self, st: OsState, p: Pending, ref: ArtifactRef, ctx: ReconcileContext
    ) -> None:
        got = await asyncio.to_thread(ctx.host.read_slot_sha256, p.slot, p.size)
        if got != p.sha256:
            p.step = "write"  # write it again on the next pass
            raise AgentError(f"slot {p.slot} reads back sha256 {got}, not {p.sha256}")
        st.slots[p.slot] = {"version": p.version, "sha256": p.sha256}

    async def _arm(self, st: OsState, p: Pending, ref: ArtifactRef, ctx: ReconcileContext) -> None:
        await asyncio.to_thread(boot.try_next, ctx.host, p.slot, TRIES)
        p.boot_id = await asyncio.to_thread(ctx.host.boot_id)

    async def _reboot(
        self, st: OsState, p: Pending, ref: ArtifactRef, ctx: ReconcileContext
    ) -> None:
        await ctx.progress(None, "Rebooting", f"into slot {p.slot} to try os {p.version}")
        await ctx.reboot()

    # --- after the reboot -------------------------------------------------------------

    async def _health_check(
        self, st: OsState, p: Pending, spec: Spec, ctx: ReconcileContext
    ) -> None:
        await ctx.progress(None, "HealthCheck", f"os {p.version} on slot {p.slot}")
        await self._wait_for_server(ctx)
        if spec.k3s.version:
            await self._wait_for_k3s(ctx)
        script = await asyncio.to_thread(ctx.host.read_slot_file, p.slot, HEALTH_CHECK)
        if script is not None:
            await self._run_script(ctx, p, script)

    async def _mark_good(self, st: OsState, p: Pending, spec: Spec, ctx: ReconcileContext) -> None:
        await asyncio.to_thread(boot.mark_good, ctx.host, p.slot)

    async def _report(self, st: OsState, p: Pending, spec: Spec, ctx: ReconcileContext) -> None:
        st.installed = p.version
        st.slots[p.slot] = {"version": p.version, "sha256": p.sha256}
        st.pending, st.failed = None, {}
        await asyncio.to_thread(self.save, st)
        await asyncio.to_thread(self._image(ctx, p).unlink, True)
        log.info("os: %s is healthy on slot %s", p.version, p.slot)

    async def _rollback(
        self, st: OsState, p: Pending, ctx: ReconcileContext, booted: str
    ) -> Condition:
        """Boot the old slot again; once it runs, report ``RolledBack``."""
        if booted == p.slot:
            crashpoints.reached(f"{NAME}:rollback")
            log.warning("os: %s failed its health check (%s); rolling back", p.version, p.reason)
            await asyncio.to_thread(boot.mark_good, ctx.host, p.from_slot)
            await ctx.progress(None, "RollingBack", f"to slot {p.from_slot}: {p.reason}")
            await ctx.reboot()
        return await self._rolled_back(st, p, ctx, p.reason)

    async def _rolled_back(
        self, st: OsState, p: Pending, ctx: ReconcileContext, reason: str
    ) -> Condition:
        await asyncio.to_thread(self._disarm, ctx.host, p.from_slot)
        message = f"os {p.version} rolled back to slot {p.from_slot}: {reason}"
        st.failed = {
            "sha256": p.sha256,
            "status": "RolledBack",
            "reason": "HealthCheckFailed" if p.step == "rollback" else "BootFailed",
            "message": message[:2048],
        }
        st.pending = None
        await asyncio.to_thread(self.save, st)
        await asyncio.to_thread(self._image(ctx, p).unlink, True)
        log.warning("os: %s", message)
        return self._condition("RolledBack", st.failed["reason"], message)

    # --- the health checks ------------------------------------------------------------

    async def _wait_for_server(self, ctx: ReconcileContext) -> None:
        """Wait until the server's port answers, or give up quietly after the timeout."""
        api = await asyncio.to_thread(_api, ctx.state)
        if api is None:
            return
        parts = urlsplit(api)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(self.health.server_timeout):
                while True:
                    try:
                        _, writer = await asyncio.open_connection(parts.hostname, port)
                    except OSError:
                        await asyncio.sleep(self.health.poll)
                        continue
                    writer.close()
                    return
        except TimeoutError:
            log.warning("os: server %s not reachable after the update; going on", api)

    async def _wait_for_k3s(self, ctx: ReconcileContext) -> None:
        argv = ["k3s", "kubectl", "get", "nodes", "--no-headers"]
        last = ""
        try:
            async with asyncio.timeout(self.health.k3s_timeout):
                while True:
                    try:
                        out = await ctx.run(argv, time_limit=60)
                        rows = [r.split() for r in out.stdout.decode().splitlines()]
                        if any(len(r) > 1 and r[1] == "Ready" for r in rows):
                            return
                        last = out.stdout.decode().strip() or "no nodes"
                    except CommandError as e:
                        last = str(e)
                    await asyncio.sleep(self.health.poll)
        except TimeoutError as e:
            raise _HealthFailed(f"the K3s node is not Ready: {last}"[:1000]) from e

    async def _run_script(self, ctx: ReconcileContext, p: Pending, script: bytes) -> None:
        path = self._state.root / "os-health-check"
        await asyncio.to_thread(self._state.write, path, script, 0o700)
        env = {"CORRAL_OS_VERSION": p.version, "CORRAL_OS_SLOT": p.slot}
        try:
            await ctx.run([str(path)], env, self.health.script_timeout)
        except CommandError as e:
            raise _HealthFailed(f"{HEALTH_CHECK}: {e.what()}: {e.stderr_tail}"[:1000]) from e

    # --- checks, state and helpers ----------------------------------------------------

    def check(self, ref: ArtifactRef, version: str, st: OsState, allow_downgrade: bool) -> None:
        """Refuse an image that is not signed by the pinned key, or not what the spec
        names, or older than the installed one (unless downgrades are allowed)."""
        if ref.kind != "os-image" or ref.version != version:
            raise Refused(
                "WrongArtifact",
                f"the spec wants os {version}, the image is {ref.kind} {ref.version}",
            )
        key = self._signing_key()
        if not artifacts.verify_ref(key, ref):
            raise Refused(
                "BadSignature",
                f"os image {ref.name} {ref.version} is unsigned or its signature does not "
                "match the pinned update-signing key",
            )
        if (
            st.installed
            and not allow_downgrade
            and version_key(version) < version_key(st.installed)
        ):
            raise Refused(
                "Downgrade",
                f"os {version} is older than the installed {st.installed} "
                "(set allow_downgrade to install it)",
            )

    async def _refuse(self, st: OsState, p: Pending, e: Refused) -> Condition:
        """The downloaded bytes are not the signed image: never try this image again."""
        st.failed = {"sha256": p.sha256, "status": "Refused", "reason": e.reason, "message": str(e)}
        st.pending = None
        await asyncio.to_thread(self.save, st)
        log.warning("os: refused %s: %s", p.version, e)
        return self._condition("Refused", e.reason, str(e))

    async def _step(self, st: OsState, p: Pending, step: str) -> None:
        crashpoints.reached(f"{NAME}:{step}")
        log.info("os: %s (%s, slot %s)", step, p.version, p.slot)

    @staticmethod
    def _advance(p: Pending, steps: tuple[str, ...]) -> None:
        i = steps.index(p.step) + 1
        p.step = steps[i] if i < len(steps) else BOOT_STEPS[0]

    def _disarm(self, host: Host, good: str) -> None:
        """``good`` is GRUB's default and no other slot is to be tried."""
        env = host.read_grubenv()
        if env.get(boot.GOOD) != good or boot.NEXT in env or boot.TRIES in env:
            boot.mark_good(host, good)

    def _healthy(self, st: OsState) -> Condition:
        slot = next((s for s, v in st.slots.items() if v.get("version") == st.installed), "")
        where = f" on slot {slot}" if slot else ""
        return self._condition("Healthy", "Installed", f"os {st.installed}{where}")

    def _condition(self, status: ConditionStatus, reason: str, message: str) -> Condition:
        return Condition(type=NAME, status=status, reason=reason, message=message[:2048])

    def _image(self, ctx: ReconcileContext, p: Pending) -> Path:
        return ctx.downloads / f"os-{p.sha256[:16]}.squashfs"

    def _url(self, ref: ArtifactRef) -> str:
        api = _api(self._state)
        return urljoin(api + "/", ref.url) if api is not None else ref.url

    def _signing_key(self) -> str:
        key = self._state.update_signing_key()
        if key is None:
            raise Refused(
                "NoSigningKey", "no update-signing key was pinned at registration; register again"
            )
        return key

    def load(self, host: Host) -> OsState:
        data = read_json(self._path)
        if not isinstance(data, dict):
            found = host.read_file(OS_VERSION_FILE, 128)
            version = found.content.decode(errors="replace").strip() if found else ""
            return OsState(installed=version)
        pending = data.get("pending")
        return OsState(
            installed=str(data.get("installed", "")),
            slots=dict(data.get("slots", {})),
            pending=Pending(**pending) if isinstance(pending, dict) else None,
            failed=dict(data.get("failed", {})),
        )

    def save(self, st: OsState) -> None:
        body = asdict(st)
        self._state.write(self._path, json.dumps(body, indent=1, sort_keys=True).encode(), 0o600)


class _HealthFailed(AgentError):
    pass


def _api(state: StateDir) -> str | None:
    """The server's API URL once the device is registered (downloads are relative to it)."""
    from node_image.agent.settings import Identity  # settings imports the REGISTRY

    identity = Identity.load(state)
    return identity.api if identity is not None else None


def _halfway(path: Path) -> Iterator[bytes]:
    """The image's chunks, with the ``write-half`` crash point after the first one."""
    for i, chunk in enumerate(file_chunks(path, 64 * 1024)):
        if i == 1:
            crashpoints.reached(f"{NAME}:write-half")
        yield chunk


_PART = re.compile(r"(\d+)|(\D+)")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key: numbers compare as numbers (``1.10`` > ``1.9``), text as text."""
    return tuple(
        (0, int(num)) if num else (1, text) for num, text in _PART.findall(version.lstrip("v"))
    )
