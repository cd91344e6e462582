"""The K3s reconciler: K3s through its official installer, run unchanged through ``sh``.

From ``spec.k3s`` (version, role, and for agents the server node's URL and join token, all
filled by the Corral server) it:

1. plans: what the spec asks for, or ``Pending`` while an agent waits for its server;
2. skips the install when the recorded install matches and ``k3s --version`` agrees;
3. checks every artifact's ed25519 signature against the pinned update-signing key, before
   a byte is downloaded or anything runs;
4. downloads them (resume, sha256, free-space check: ``ctx.download``);
5. stages the binary into ``INSTALL_K3S_BIN_DIR`` and the airgap images into
   ``/var/lib/rancher/k3s/agent/images/`` (under the host's root), after running the
   uninstaller of the role the device leaves, if it changes role;
6. runs ``sh install.sh`` with the documented environment (``INSTALL_K3S_SKIP_DOWNLOAD=true``
   always: the installer then downloads and checks nothing, so verifying is ours). The join
   token goes in the environment only, never argv or logs;
7. checks ``k3s --version`` and records the install;
8. waits for the node to be ``Ready`` (``k3s kubectl get nodes``);
9. on the server node, reports the join URL and token to the Corral server over mTLS HTTPS.

Conditions: ``Progressing`` while it works, ``Ready``, ``Installed`` (the node not Ready
yet), ``Pending`` (an agent waiting for its server), or ``Error`` with the installer's stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from node_image.agent.context import ReconcileContext
from node_image.agent.download import DownloadError
from node_image.agent.reconcilers.base import error_condition
from node_image.agent.reconcilers.deferred import K3S, k3s_not_wanted
from node_image.agent.state import StateDir, read_json
from node_image.agent.transport import ApiError
from node_image.commands import CommandError
from node_image.errors import AgentError
from registration.artifacts import ArtifactRef, verify_ref
from registration.desired import Condition, K3sSpec, Spec

log = logging.getLogger(__name__)

NAME = K3S
BIN_DIR = "/usr/local/bin"
SYSTEMD_DIR = "/etc/systemd/system"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
NODE_TOKEN = "/var/lib/rancher/k3s/server/node-token"  # noqa: S105 - a path
#: The kubelet's kubeconfig exists on servers and agents alike, and lets a node read its own
#: Node object, so one readiness check serves both roles.
KUBELET_KUBECONFIG = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
#: The K3s supervisor and API port agents join.
SERVER_PORT = 6443
IMAGES_SUFFIXES = (".tar", ".tar.gz", ".tar.zst", ".tar.lz4", ".tar.bz2", ".txt")
MAX_TOKEN = 1024


@dataclass(frozen=True)
class Plan:
    """What the spec asks for, checked."""

    version: str
    role: str  # "server" or "agent"
    server_url: str | None
    token: str | None
    install_script: ArtifactRef
    binary: ArtifactRef
    images: ArtifactRef | None

    @property
    def artifacts(self) -> list[ArtifactRef]:
        return [r for r in (self.install_script, self.binary, self.images) if r is not None]

    def record(self) -> Installed:
        return Installed(
            version=self.version,
            role=self.role,
            server_url=self.server_url,
            token_sha256=_sha256(self.token),
            binary_sha256=self.binary.sha256,
        )


@dataclass(frozen=True)
class Installed:
    """What the last successful install was run with (the token only as a hash)."""

    version: str
    role: str
    server_url: str | None
    token_sha256: str | None
    binary_sha256: str


class Refused(AgentError):
    """The reconcile stops here with this condition (nothing was run)."""

    def __init__(self, condition: Condition) -> None:
        super().__init__(condition.message)
        self.condition = condition


@dataclass(frozen=True)
class Timing:
    """How long to wait for the node to become Ready, and how often to look."""

    ready_timeout: float = 120.0
    ready_interval: float = 2.0
    install_timeout: float = 900.0


class K3sReconciler:
    """Installs, upgrades and joins K3s as ``spec.k3s`` says; idempotent."""

    name = NAME

    def __init__(self, state: StateDir, timing: Timing = Timing()) -> None:
        self._state = state
        self._path = state.reconciler(NAME)
        self.timing = timing

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        if (idle := k3s_not_wanted(spec)) is not None:
            return idle
        want = spec.k3s
        try:
            # 1. What the spec asks for.
            plan = _plan(want)
            node = await asyncio.to_thread(_node_name, ctx)
            # 2. Installed already at this version, role and server: nothing to run.
            if not await self._installed(ctx, plan):
                # 3-4. Signatures first, then the bytes (sha256 checked while streaming).
                key = await asyncio.to_thread(ctx.state.update_signing_key)
                _check_signatures(key, plan)
                files = await _fetch(ctx, plan)
                # 5. Stage the binary and the airgap images where K3s expects them; first,
                #    when this device changes role, the uninstaller the installer wrote for
                #    the old one (it removes the binary and data: the roles do not mix).
                await _leave_role(ctx, await asyncio.to_thread(self._role), plan.role)
                await _stage(ctx, plan, files)
                # 6. The official installer, through sh.
                await _install(ctx, plan, node, files[plan.install_script.id], self.timing)
                # 7. The version it reports, and the record of this install.
                await _check_version(ctx, plan.version)
                await asyncio.to_thread(self._save, plan.record())
            # 8. The node Ready.
            ready = await _wait_ready(ctx, node, self.timing)
            # 9. The server node says how to join it.
            if plan.role == "server" and ready:
                await self._report_server(ctx, plan)
        except Refused as e:
            return e.condition
        if not ready:
            return _condition(
                "Installed",
                "NodeNotReady",
                f"k3s {plan.version} {plan.role}; node {node} not Ready",
                plan.version,
            )
        return _condition(
            "Ready", "NodeReady", f"k3s {plan.version} {plan.role}; node {node} Ready", plan.version
        )

    # --- the record of what is installed ----------------------------------------------

    def _load(self) -> dict[str, Any]:
        data = read_json(self._path)
        return data if isinstance(data, dict) else {}

    def _role(self) -> str | None:
        installed = self._load().get("installed")
        return str(installed["role"]) if isinstance(installed, dict) else None

    def _save(self, installed: Installed) -> None:
        # A new install (a new version, or this device became the server node) is reported
        # anew: the Corral server may have forgotten an earlier report of this device.
        self._state.write_json(self._path, {"installed": asdict(installed)})

    async def _installed(self, ctx: ReconcileContext, plan: Plan) -> bool:
        recorded = (await asyncio.to_thread(self._load)).get("installed")
        if recorded != asdict(plan.record()):
            return False
        running = await _k3s_version(ctx)
        if running != plan.version:
            log.info(
                "k3s: recorded %s but the binary says %s; installing again", plan.version, running
            )
            return False
        return True

    async def _report_server(self, ctx: ReconcileContext, plan: Plan) -> None:
        token = await asyncio.to_thread(_node_token, ctx)
        url = await asyncio.to_thread(_server_url, ctx)
        from registration.protocol import K3sServerReport  # only the server node sends one

        report = K3sServerReport(server_url=url, token=token, version=plan.version)
        reported = {"server_url": url, "token_sha256": _sha256(token), "version": plan.version}
        if (await asyncio.to_thread(self._load)).get("reported") == reported:
            return
        if ctx.api is None:  # a tool or test without a Corral server
            log.warning("k3s: no Corral server to report the join URL and token to")
            return
        try:
            ack = await ctx.api.report_k3s_server(report)
        except ApiError as e:
            raise Refused(_error("ReportFailed", f"reporting the join token: {e}")) from e
        log.info(
            "k3s: reported server %s %s; %s agents in %s", url, plan.version, ack.agents, ack.group
        )

        def save() -> None:
            data = self._load()
            data["reported"] = reported
            self._state.write_json(self._path, data)

        await asyncio.to_thread(save)


# --- the steps ------------------------------------------------------------------------


def _plan(want: K3sSpec) -> Plan:
    version = want.version or ""
    role = want.role if want.role in ("server", "agent") else "server"
    missing = [
        n
        for n, ref in (("install_script", want.install_script), ("binary", want.binary))
        if ref is None
    ]
    if missing:
        raise Refused(
            _error(
                "ArtifactsMissing",
                f"the server has no {' and '.join(missing)} for k3s {version} in its mirror",
            )
        )
    if role == "agent" and not (want.server_url and want.token):
        raise Refused(
            _condition("Pending", "WaitingForServer", "waiting for the K3s server node to report")
        )
    if want.server_url and not want.server_url.startswith("https://"):
        raise Refused(_error("BadServerUrl", "K3S_URL must be an https:// URL"))
    assert want.install_script is not None and want.binary is not None  # noqa: S101 - checked
    return Plan(
        version=version,
        role=role,
        server_url=want.server_url if role == "agent" else None,
        token=want.token if role == "agent" else None,
        install_script=want.install_script,
        binary=want.binary,
        images=want.images,
    )


def _check_signatures(key: str | None, plan: Plan) -> None:
    if key is None:
        raise Refused(
            _error("NoSigningKey", "no update-signing key pinned at registration; register again")
        )
    for ref in plan.artifacts:
        if not verify_ref(key, ref):
            raise Refused(
                _error(
                    "BadSignature",
                    f"{ref.kind} {ref.name} {ref.version}: the signature does not verify with "
                    "the pinned update-signing key; refused",
                )
            )


async def _fetch(ctx: ReconcileContext, plan: Plan) -> dict[str, Path]:
    """Each artifact, downloaded and sha256-verified: ref id → file."""
    api = await asyncio.to_thread(_api_url, ctx)
    files: dict[str, Path] = {}
    for ref in plan.artifacts:
        dest = ctx.downloads / "k3s" / f"{ref.sha256}-{ref.name}"
        url = urljoin(api + "/", ref.url) if api else ref.url
        try:
            got = await ctx.download(url, dest, ref.sha256, ref.size, what=f"{ref.kind} {ref.name}")
        except DownloadError as e:
            raise Refused(_error(e.reason, str(e))) from e
        files[ref.id] = got.path
    return files


async def _stage(ctx: ReconcileContext, plan: Plan, files: dict[str, Path]) -> None:
    await ctx.progress(None, "Staging", f"k3s {plan.version} binary and images")
    binary = ctx.host.resolve(f"{BIN_DIR}/k3s")
    await asyncio.to_thread(_install_file, files[plan.binary.id], binary, 0o755)
    if plan.images is not None:
        images = ctx.host.resolve(f"{IMAGES_DIR}/{_images_name(plan.images)}")
        await asyncio.to_thread(_install_file, files[plan.images.id], images, 0o644)


async def _install(
    ctx: ReconcileContext, plan: Plan, node: str, script: Path, timing: Timing
) -> None:
    env = {
        "INSTALL_K3S_SKIP_DOWNLOAD": "true",
        "INSTALL_K3S_VERSION": plan.version,
        "INSTALL_K3S_EXEC": plan.role,
        "K3S_NODE_NAME": node,
        "INSTALL_K3S_BIN_DIR": str(ctx.host.resolve(BIN_DIR)),
        "INSTALL_K3S_SYSTEMD_DIR": str(ctx.host.resolve(SYSTEMD_DIR)),
        "INSTALL_K3S_SKIP_SELINUX_RPM": "true",
    }
    if plan.role == "agent":
        assert plan.server_url is not None and plan.token is not None  # noqa: S101 - planned
        env["K3S_URL"] = plan.server_url
        env["K3S_TOKEN"] = plan.token
    await ctx.progress(None, "Installing", f"k3s {plan.version} {plan.role} with install.sh")
    try:
        await ctx.run(["sh", str(script)], env, timing.install_timeout)
    except CommandError as e:  # stderr is masked: the token never shows
        raise Refused(_error("InstallFailed", f"install.sh: {e.what()}: {e.stderr_tail}")) from e
    log.info("k3s: installed %s as %s", plan.version, plan.role)


async def _leave_role(ctx: ReconcileContext, installed: str | None, wanted: str) -> None:
    """Run the uninstaller the installer wrote for the role this device is leaving."""
    if installed is None or installed == wanted:
        return
    service = "k3s" if installed == "server" else "k3s-agent"
    script = ctx.host.resolve(f"{BIN_DIR}/{service}-uninstall.sh")
    if not await asyncio.to_thread(script.is_file):
        return
    await ctx.progress(None, "Uninstalling", f"the K3s {installed} before installing the {wanted}")
    try:
        await ctx.run(["sh", str(script)], None, 300)
    except CommandError as e:
        raise Refused(_error("UninstallFailed", f"{script.name}: {e.describe()}")) from e
    log.info("k3s: uninstalled the %s to become a %s", installed, wanted)


async def _k3s_version(ctx: ReconcileContext) -> str | None:
    """What ``k3s --version`` says (``k3s version v1.31.4+k3s1 (…)``); None if no binary."""
    binary = ctx.host.resolve(f"{BIN_DIR}/k3s")
    if not await asyncio.to_thread(os.access, binary, os.X_OK):
        return None
    try:
        result = await ctx.run([str(binary), "--version"], None, 30)
    except CommandError as e:
        log.info("k3s --version failed: %s", e)
        return None
    for line in result.stdout.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) >= 3 and words[:2] == ["k3s", "version"]:
            return words[2]
    return None


async def _check_version(ctx: ReconcileContext, version: str) -> None:
    running = await _k3s_version(ctx)
    if running != version:
        raise Refused(
            _error("VersionMismatch", f"k3s --version says {running}, the spec wants {version}")
        )


async def _wait_ready(ctx: ReconcileContext, node: str, timing: Timing) -> bool:
    """Whether ``node`` is Ready in ``k3s kubectl get nodes`` within the timeout."""
    binary = str(ctx.host.resolve(f"{BIN_DIR}/k3s"))
    kubeconfig = str(ctx.host.resolve(KUBELET_KUBECONFIG))
    argv = [binary, "kubectl", "--kubeconfig", kubeconfig, "get", "nodes", node, "--no-headers"]
    deadline = time.monotonic() + timing.ready_timeout
    reported = False
    while True:
        try:
            result = await ctx.run(argv, None, 30)
            if _node_ready(result.stdout.decode(errors="replace"), node):
                return True
        except CommandError as e:
            log.debug("k3s: node %s not answering yet: %s", node, e)
        if time.monotonic() >= deadline:
            return False
        if not reported:
            await ctx.progress(None, "WaitingForNode", f"node {node} not Ready yet")
            reported = True
        await asyncio.sleep(timing.ready_interval)


def _node_ready(table: str, node: str) -> bool:
    for line in table.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == node:
            return "Ready" in words[1].split(",")
    return False


# --- small helpers ----------------------------------------------------------------------


def _node_name(ctx: ReconcileContext) -> str:
    """``K3S_NODE_NAME``: the device id (a valid node name), else the host's name."""
    identity = ctx.state.read_identity()
    if identity is not None:
        return str(identity["device_id"])
    return socket.gethostname().lower()


def _api_url(ctx: ReconcileContext) -> str | None:
    identity = ctx.state.read_identity()
    if identity is None:
        return None
    endpoints = identity.get("endpoints") or {}
    api = endpoints.get("api") or identity.get("server")
    return str(api).rstrip("/") if api else None


def _server_url(ctx: ReconcileContext) -> str:
    """``https://<this node's address>:6443``: the address it reaches the Corral server from
    (a UDP connect sends nothing; it only picks the route)."""
    api = _api_url(ctx)
    host = urlsplit(api).hostname if api else None
    address = "127.0.0.1"
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.connect((host, 443))
                address = s.getsockname()[0]
            except OSError as e:
                log.warning("k3s: no route to %s (%s); reporting %s", host, e, address)
    shown = f"[{address}]" if ":" in address else address
    return f"https://{shown}:{SERVER_PORT}"


def _node_token(ctx: ReconcileContext) -> str:
    found = ctx.host.read_file(NODE_TOKEN, MAX_TOKEN)
    token = found.content.decode(errors="replace").strip() if found else ""
    if not token or len(token) > MAX_TOKEN:
        raise Refused(_error("NoToken", f"{NODE_TOKEN} is missing or unreadable"))
    return token


def _images_name(ref: ArtifactRef) -> str:
    if ref.name.endswith(IMAGES_SUFFIXES):
        return ref.name
    return f"k3s-airgap-images-{ref.arch or 'amd64'}.tar.zst"


def _install_file(source: Path, dest: Path, mode: int) -> None:
    """Copy ``source`` to ``dest`` atomically (temp file in the same directory, rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.corral-tmp")
    with open(source, "rb") as src, open(temp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(temp, mode)
    os.replace(temp, dest)


def _sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None


def _condition(status: str, reason: str, message: str, version: str | None = None) -> Condition:
    return Condition.model_validate(
        {
            "type": NAME,
            "status": status,
            "reason": reason,
            "message": message[:2048],
            "version": version,
        }
    )


def _error(reason: str, message: str) -> Condition:
    return error_condition(NAME, reason, [message])


__all__ = ["K3sReconciler", "Timing"]
