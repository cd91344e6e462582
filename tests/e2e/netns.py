"""A network-fault lab for end-to-end tests: namespaces, one bridge, veth links, nftables loss.

Topology of one :class:`Lab` (nothing is created in the root namespace)::

    <prefix>-sw    switch namespace holding the bridge <prefix>br
    <prefix>-srv   server, eth0 = 10.237.X.1/24     <-- veth -->  <prefix>v0  (port of the bridge)
    <prefix>-aN    agent N, eth0 = 10.237.X.(10+N)   <-- veth -->  <prefix>v(N+1)

``<prefix>`` is ``crl`` plus 6 random hex digits, new for every lab, so reruns on the same machine
never collide and leftovers of crashed runs are recognisable (see :func:`sweep_leftovers`).
X is chosen per lab among the values no live lab uses.

Faults:

* :meth:`Host.link_down` sets the switch-side veth down: the host's eth0 loses carrier and every
  frame to or from it is dropped silently, like a cut cable. Every host has permanent neighbour
  (ARP) entries for all the others, so a connect attempt times out instead of failing with
  EHOSTUNREACH after ARP gives up, and established connections just retransmit: no RST, and
  they carry on after :meth:`Host.link_up`.
* :meth:`Host.drop_percent` installs an nftables table inside the host's namespace that drops
  p % of the packets (``numgen random mod 100 < p drop``) on input, output or both.

Every process started with :meth:`Host.popen` is killed (SIGTERM to its process group, then
SIGKILL) at teardown, and so is any other process still inside one of the lab's namespaces.

The module only needs the standard library, ``ip`` (iproute2) and ``nft``; it must run as root.
The ICMP and TCP probes the hosts run are ``netns_probe.py``; markers, process tracking and
sweeping the leftovers of crashed runs are in ``netns_sweep.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.e2e.netns_sweep import (
    MARKER_DIR,
    PREFIX_STEM,
    LabError,
    LabTeardownError,
    _cmd,
    _ip,
    _ip_batch,
    _kill_netns_processes,
    _list_netns,
    _marker_path,
    _proc_start_time,
    _ProcessTracker,
    _read_markers,
    _root_links,
    _tool,
    leftovers,
    sweep_leftovers,
)

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "LabTeardownError",
    "PingResult",
    "leftovers",
    "sweep_leftovers",
]


SUBNET_FIRST_OCTETS = (10, 237)
SERVER_HOST = 1
FIRST_AGENT_HOST = 10
MAX_AGENTS = 200
HOST_IFACE = "eth0"
NFT_FAMILY = "inet"

#: The probes each host runs inside its namespace (a script: only the standard library).
_SCRIPT = str(Path(__file__).resolve().with_name("netns_probe.py"))
_DEFAULT_TERM_GRACE = 3.0

Direction = Literal["both", "in", "out"]


# --------------------------------------------------------------------------------------------
# Hosts


@dataclass(frozen=True)
class PingResult:
    """Outcome of :meth:`Host.ping`."""

    transmitted: int
    received: int

    @property
    def loss(self) -> float:
        """Fraction of echo requests without a reply, 0.0 to 1.0."""
        return 1.0 - self.received / self.transmitted if self.transmitted else 1.0


_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass(eq=False, kw_only=True)
class Host:
    """One machine of the lab: a network namespace with ``eth0`` plugged into the lab's bridge."""

    #: Name of the network namespace (for ``ip netns exec``).
    name: str
    #: "server" or "agentN".
    label: str
    #: IPv4 address of ``eth0``, as text.
    address: str
    #: The veth end inside the switch namespace that is this host's bridge port.
    veth_switch_side: str
    #: The switch namespace, where ``veth_switch_side`` lives.
    switch_ns: str
    #: MAC address of ``eth0``.
    mac: str
    #: Interface name inside the namespace.
    iface: str = HOST_IFACE
    #: nftables table that :meth:`drop_percent` manages in this namespace.
    nft_table: str
    _tracker: _ProcessTracker = field(repr=False)

    def netns_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        if not argv:
            raise ValueError("empty argv")
        return [_tool("ip"), "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; the lab kills it (and its group) at teardown.

        Keyword arguments go to :class:`subprocess.Popen`. By default the process gets its own
        session (so teardown can signal everything it forked) and stdin from /dev/null.
        """
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return self._tracker.spawn(self.netns_argv(argv), **kw)

    def run(
        self, argv: Sequence[str], check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside the namespace to completion (:func:`subprocess.run`).

        Defaults: stdin from /dev/null and a 120 s timeout.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.netns_argv(argv), check=check, **kw)

    # Faults ------------------------------------------------------------------------------

    def link_down(self) -> None:
        """Cut this host's cable: its bridge port goes down and ``eth0`` loses carrier.

        Frames are dropped silently in both directions; connections time out, never get RST.
        """
        _ip("link", "set", self.veth_switch_side, "down", ns=self.switch_ns)

    def link_up(self) -> None:
        """Plug the cable back in (the bridge has no STP, so the port forwards at once)."""
        _ip("link", "set", self.veth_switch_side, "up", ns=self.switch_ns)

    def drop_percent(self, p: int, direction: Direction = "both") -> None:
        """Drop ``p`` % of this host's packets, chosen at random, per packet and per direction.

        ``direction`` "both" drops on input and on output: a request-reply exchange through this
        host then loses 1 - (1 - p/100)**2 of the round trips (51 % for p=30). "in" or "out"
        affects one direction only. Calling it again replaces the previous setting atomically.
        Note that a packet dropped on output makes the sending call fail with EPERM.
        """
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 100:
            raise ValueError(f"p must be an int from 0 to 100, not {p!r}")
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction must be 'both', 'in' or 'out', not {direction!r}")
        chains = []
        hooks = {"in": ["input"], "out": ["output"], "both": ["input", "output"]}[direction]
        for hook in hooks:
            chains.append(
                f"  chain {hook} {{\n"
                f"    type filter hook {hook} priority raw; policy accept;\n"
                f"    numgen random mod 100 < {p} drop\n"
                f"  }}\n"
            )
        table = f"{NFT_FAMILY} {self.nft_table}"
        # Create-delete-create in one transaction: replaces an existing table atomically.
        body = "".join(chains)
        self._nft(f"table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}}}\n")

    def clear_drop(self) -> None:
        """Remove what :meth:`drop_percent` installed (no-op when nothing is installed)."""
        table = f"{NFT_FAMILY} {self.nft_table}"
        self._nft(f"table {table} {{}}\ndelete table {table}\n")

    def _nft(self, script: str) -> None:
        _cmd(self.netns_argv([_tool("nft"), "-f", "-"]), stdin=script)

    # Probes ------------------------------------------------------------------------------

    def ping(
        self, destination: str, count: int = 200, interval: float = 0.01, timeout: float = 1.0
    ) -> PingResult:
        """ICMP-echo ``destination`` from this host, like ``ping -c COUNT -i INTERVAL -W TIMEOUT``.

        Uses the system ``ping`` when it is installed, else an equivalent raw-socket pinger of
        this module (run as root inside the namespace).
        """
        if count < 1 or interval <= 0 or timeout <= 0:
            raise ValueError("count, interval and timeout must be positive")
        deadline = count * interval + timeout + 30
        ping = shutil.which("ping")
        if ping is not None:
            argv = [ping, "-n", "-q", "-c", str(count), "-i", f"{interval:g}"]
            argv += ["-W", f"{timeout:g}", destination]
        else:
            argv = [sys.executable, "-I", _SCRIPT, "ping", destination, str(count)]
            argv += [str(interval), str(timeout)]
        done = self.run(argv, check=False, capture_output=True, text=True, timeout=deadline)
        match = _PING_SUMMARY.search(done.stdout)
        if match is None:
            raise LabError(f"{argv}: no summary (exit {done.returncode}): {done.stderr.strip()}")
        return PingResult(int(match.group(1)), int(match.group(2)))

    def tcp_probe(self, address: str, port: int, timeout: float = 3.0, *, wait: float = 0) -> str:
        """Try one TCP connect from this host; return how it went.

        "ok", "timeout" (no answer within ``timeout`` s: the cable is cut), "refused" (RST:
        nothing listens), "unreachable" (EHOSTUNREACH / ENETUNREACH) or "error:<ERRNO>".
        With ``wait`` > 0 it retries until "ok" or until ``wait`` s have passed.
        """
        argv = [sys.executable, "-I", _SCRIPT, "tcp-probe", address, str(port), str(timeout)]
        done = self.run(
            [*argv, str(wait)], capture_output=True, text=True, timeout=timeout + wait + 30
        )
        return str(done.stdout.strip())

    def wait_tcp(self, address: str, port: int, timeout: float = 15.0) -> None:
        """Wait until ``address:port`` accepts connections from this host; LabError if not."""
        outcome = self.tcp_probe(address, port, timeout=1.0, wait=timeout)
        if outcome != "ok":
            raise LabError(f"{self.label}: {address}:{port} not reachable in {timeout}s: {outcome}")


# --------------------------------------------------------------------------------------------
# The lab


class Lab:
    """A switch, a server and ``n_agents`` agents in fresh network namespaces.

    Use it as a context manager: ``__enter__`` builds everything (sweeping leftovers of crashed
    runs first), ``__exit__`` kills the lab's processes and deletes its namespaces, also when
    the body raised. An atexit hook does the same if the lab is never closed.
    """

    def __init__(
        self,
        n_agents: int = 1,
        *,
        sweep: bool = True,
        term_grace: float = _DEFAULT_TERM_GRACE,
    ) -> None:
        if isinstance(n_agents, bool) or not 0 <= n_agents <= MAX_AGENTS:
            raise ValueError(f"n_agents must be from 0 to {MAX_AGENTS}, not {n_agents!r}")
        self.n_agents = n_agents
        self.sweep = sweep
        self.term_grace = term_grace
        #: Unique name prefix of this lab's namespaces, interfaces and nft tables.
        self.prefix = f"{PREFIX_STEM}{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.bridge = f"{self.prefix}br"
        self._subnet: ipaddress.IPv4Network | None = None
        self._server: Host | None = None
        self._agents: list[Host] = []
        self._tracker = _ProcessTracker()
        self._namespaces: list[str] = []
        self._started = False
        self._closed = False

    # Attributes ----------------------------------------------------------------------------

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """The lab's /24 (10.237.X.0/24)."""
        if self._subnet is None:
            raise LabError("the lab is not started")
        return self._subnet

    @property
    def server(self) -> Host:
        """The server host (.1)."""
        if self._server is None:
            raise LabError("the lab is not started")
        return self._server

    @property
    def agents(self) -> list[Host]:
        """The agent hosts (.10, .11, ...)."""
        if self._server is None:
            raise LabError("the lab is not started")
        return list(self._agents)

    @property
    def hosts(self) -> list[Host]:
        """Server first, then the agents."""
        return [self.server, *self.agents]

    # Life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except LabTeardownError as err:
            if exc is None:
                raise
            exc.add_note(f"lab {self.prefix} teardown failed too: {err}")

    def start(self) -> None:
        """Build the lab. On failure whatever was built is removed before the error propagates."""
        if self._started:
            raise LabError("a Lab can be started once")
        self._started = True
        if os.geteuid() != 0:
            raise LabError("network namespaces need root")
        _tool("ip")
        _tool("nft")
        if self.sweep:
            sweep_leftovers()
        atexit.register(self._close_at_exit)
        try:
            self._claim()
            self._build()
        except BaseException:
            with contextlib.suppress(LabError):
                self.close()
            raise

    def close(self) -> None:
        """Tear down: kill processes, delete namespaces (and so veths, bridge, nft tables).

        Idempotent. Raises LabTeardownError when something could not be removed; the marker is
        then kept so that :func:`sweep_leftovers` finishes the job after this process is gone.
        """
        if self._closed or not self._started:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        errors = self._tracker.stop_all(self.term_grace)
        # Hosts first, the switch last: deleting a namespace destroys its veth ends and peers.
        for ns in reversed(self._namespaces):
            try:
                survivors = _kill_netns_processes(ns, self.term_grace)
                if survivors:
                    errors.append(f"processes {survivors} still in {ns}")
                _ip("netns", "del", ns)
            except LabError as err:
                errors.append(str(err))
        try:
            remaining = [ns for ns in _list_netns() if ns.startswith(f"{self.prefix}-")]
            remaining += [n for n in _root_links() if n.startswith(self.prefix)]
        except LabError as err:
            remaining = [str(err)]
        errors += [f"left behind: {name}" for name in remaining]
        if not errors:
            with contextlib.suppress(FileNotFoundError):
                _marker_path(self.prefix).unlink()
        if errors:
            raise LabTeardownError(f"lab {self.prefix}: " + "; ".join(errors))

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as err:  # last-chance cleanup: report, never raise at exit
            print(f"corral netns lab: {err}", file=sys.stderr)

    # Building ------------------------------------------------------------------------------

    def _claim(self) -> None:
        """Pick a fresh prefix and subnet and write the ownership marker, before creating."""
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        existing = _list_netns()
        for _attempt in range(20):
            markers = _read_markers()
            taken = any(ns.startswith(f"{self.prefix}-") for ns in existing)
            if not taken and self.prefix not in markers:
                used = {m.third_octet for m in markers.values() if m.owner_alive}
                free = [x for x in range(256) if x not in used] or list(range(256))
                octet = random.choice(free)
                record = {
                    "pid": os.getpid(),
                    "start_time": _proc_start_time(os.getpid()),
                    "third_octet": octet,
                }
                try:
                    fd = os.open(_marker_path(self.prefix), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as out:
                        json.dump(record, out)
                    first, second = SUBNET_FIRST_OCTETS
                    self._subnet = ipaddress.IPv4Network(f"{first}.{second}.{octet}.0/24")
                    return
            self.prefix = f"{PREFIX_STEM}{secrets.token_hex(3)}"
            self.switch = f"{self.prefix}-sw"
            self.bridge = f"{self.prefix}br"
        raise LabError("could not find a free lab prefix")

    def _add_netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)

    def _build(self) -> None:
        subnet = self.subnet
        octet = int(subnet.network_address.packed[2])
        self._add_netns(self.switch)
        _ip_batch(
            self.switch,
            [
                "link set lo up",
                f"link add {self.bridge} type bridge stp_state 0 forward_delay 0",
                f"link set {self.bridge} addrgenmode none",
                f"link set {self.bridge} up",
            ],
        )
        plan = [("server", f"{self.prefix}-srv", SERVER_HOST)]
        plan += [
            (f"agent{i}", f"{self.prefix}-a{i}", FIRST_AGENT_HOST + i) for i in range(self.n_agents)
        ]
        hosts: list[Host] = []
        for index, (label, ns, host_byte) in enumerate(plan):
            veth = f"{self.prefix}v{index}"
            mac = f"02:c7:{octet:02x}:00:00:{host_byte:02x}"
            self._add_netns(ns)
            switch_mac = f"02:c7:{octet:02x}:01:00:{host_byte:02x}"
            veth_pair = f"link add {veth} address {switch_mac} type veth"
            peer = f"peer name {HOST_IFACE} address {mac} netns {ns}"
            _ip(*f"{veth_pair} {peer}".split(), ns=self.switch)
            _ip_batch(
                self.switch,
                [
                    f"link set {veth} addrgenmode none",
                    f"link set {veth} master {self.bridge}",
                    f"link set {veth} up",
                ],
            )
            address = str(subnet.network_address + host_byte)
            _ip_batch(
                ns,
                [
                    "link set lo up",
                    f"link set {HOST_IFACE} addrgenmode none",
                    f"addr add {address}/{subnet.prefixlen} dev {HOST_IFACE}",
                    f"link set {HOST_IFACE} up",
                ],
            )
            hosts.append(
                Host(
                    name=ns,
                    label=label,
                    address=address,
                    veth_switch_side=veth,
                    switch_ns=self.switch,
                    mac=mac,
                    nft_table=f"{self.prefix}_drop",
                    _tracker=self._tracker,
                )
            )
        # Static neighbours: a cut link then means silence (timeouts), never an ARP failure
        # turned into EHOSTUNREACH.
        for host in hosts:
            _ip_batch(
                host.name,
                [
                    f"neigh replace {peer.address} lladdr {peer.mac} dev {HOST_IFACE} nud permanent"
                    for peer in hosts
                    if peer is not host
                ]
                or ["neigh flush all"],
            )
        self._server, self._agents = hosts[0], hosts[1:]
