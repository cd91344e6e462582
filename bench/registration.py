"""Registration throughput of the real server, against the baselines that bound it.

One run measures, against one ``corral serve`` started here:

1. registrations/s and p50/p99 latency at 64 concurrent, each registration on its own fresh
   TLS connection (a new device: its own key, CSR and DMI UUID, one request, close);
2. ``GET /healthz`` with the same generator and a fresh TLS connection per request: the TLS
   floor, i.e. what the server does when a request costs nothing but the handshake;
3. registrations/s over keep-alive connections (no handshake per registration);
4. the crypto-only limit: ``identity.load_csr`` + ``CertificateAuthority.issue_device`` in a
   tight loop on one core, in this process while the server is idle.

Targets: (1) >= 70 % of (2) with p99 <= 150 ms; (3) >= 30 % of (4).

Why the load generator is built this way: the machine has two cores and the generator shares
them with the server. A client TLS handshake costs more CPU than the server's (the client
parses the server's certificate, which OpenSSL 3 does slowly, and checks its signature), so a
single-process generator saturates its core before a cheap endpoint such as /healthz
saturates the server. The generator therefore runs in separate processes (``--procs``,
default 2, so it can take whatever CPU the server leaves), each an ``asyncio`` loop speaking
pre-built HTTP/1.1 over TLS streams (no HTTP client library, no per-request JSON, no GC during
a phase): the cheapest Python client measured here that still does a full handshake per
connection (threads with blocking sockets and aiohttp's client cost as much or more). It
skips certificate-chain verification, which the server's work does not depend on. All keys,
CSRs and request bodies are generated before timing. Figures come from the steady state only
(after a warm-up, before the drain), and each phase also reports the server's own CPU per
request, which does not depend on how much CPU the generator took: even so, /healthz is
partly limited by the generator on this machine, which flatters the fresh-TLS ratio; the
result line therefore also gives the ratio of server CPU per request ("CPU-normalised").

The VM's speed drifts by 10-30 % over minutes, so the phases run in ``--rounds`` rounds
(default 3) and rates and ratios are medians over rounds, each ratio taken within one round;
latency percentiles pool every measured request of every round. Other jobs on the machine (a
test suite, say) would end up in the figures: each phase waits for a quiet machine first, and
a phase during which other work took more than 0.15 of a core is run again (``--retries``),
for up to ``--patience`` seconds into the run; a result kept regardless is marked DISTURBED.

Run: ``.venv/bin/python bench/registration.py [--quick] [--profile DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.*, and the real
# ``registration`` package ahead of this file, which shares its name

import argparse
import functools
import gc
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bench.loadgen import LoadGenerator, PhaseResult, PhaseSpec, build_request
from bench.procstat import CLK_TCK, machine_cpu_ticks, wait_quiet
from bench.profiling import py_spy
from bench.report import append_row, git_describe, log, median, percentile, today, verdict
from bench.stack import Stack
from edge_server.pki import Pki
from registration import identity
from registration.protocol import PROTOCOL_VERSION, Cpu, Facts, Memory, RegisterRequest

CONCURRENCY = 64
TARGET_FRESH_RATIO = 0.70
TARGET_FRESH_P99_MS = 150.0
TARGET_KEEPALIVE_RATIO = 0.30
OTHER_LIMIT = 0.15  # cores of other work above which a phase counts as disturbed
HEALTHZ, FRESH, KEEPALIVE = "healthz (fresh TLS)", "register (fresh TLS)", "register (keep-alive)"


@dataclass(frozen=True)
class Sizes:
    """Requests per phase and round: ``*_warmup`` + measured, plus the drain."""

    rounds: int
    healthz_warmup: int
    healthz: int
    fresh_warmup: int
    fresh: int
    keepalive_warmup: int
    keepalive: int
    crypto: int


FULL = Sizes(3, 200, 2000, 150, 1500, 300, 2500, 2000)
QUICK = Sizes(1, 50, 300, 50, 300, 100, 400, 300)


@dataclass(frozen=True)
class CryptoResult:
    rate: float
    load_csr_us: float
    issue_us: float
    other_cpu: float  # cores used by other work on the machine meanwhile


T = TypeVar("T", PhaseResult, CryptoResult)


@dataclass(frozen=True)
class Round:
    phases: dict[str, PhaseResult]
    crypto: CryptoResult

    @property
    def fresh_ratio(self) -> float:
        return self.phases[FRESH].rate / self.phases[HEALTHZ].rate

    @property
    def fresh_cpu_ratio(self) -> float:
        """Server CPU per healthz over server CPU per registration: the fresh-TLS ratio one
        dedicated server core would show, whatever the generator took."""
        return self.phases[HEALTHZ].server_ms_per_req / self.phases[FRESH].server_ms_per_req

    @property
    def keepalive_ratio(self) -> float:
        return self.phases[KEEPALIVE].rate / self.crypto.rate


def registration_bodies(token: str, n: int) -> list[bytes]:
    """``n`` different simulated machines, each with its own key, CSR and DMI UUID."""
    bodies = []
    for i in range(n):
        doc = RegisterRequest(
            token=token,
            csr=identity.make_csr(identity.generate_key()).decode(),
            facts=Facts(
                hostname=f"bench-{i}",
                dmi={"product_uuid": str(uuid.uuid4())},
                cpu=Cpu(model="bench", count=2),
                memory=Memory(total_bytes=2**30),
                kernel="6.1.0",
                arch="x86_64",
            ),
            labels={},
            agent_version="bench",
            protocol_version=PROTOCOL_VERSION,
        )
        bodies.append(doc.model_dump_json().encode())
    return bodies


def crypto_only(ca: identity.CertificateAuthority, csrs: list[str]) -> CryptoResult:
    """What the server must do per registration whatever else it does: parse and verify the
    CSR, build and sign the certificate. One thread, so one core."""
    for i, pem in enumerate(csrs[:100]):  # warm-up
        ca.issue_device(f"dev-warm{i:04d}", identity.csr_public_key(identity.load_csr(pem)), 1)
    clock = time.perf_counter
    in_load = in_issue = 0.0
    busy0, cpu0 = machine_cpu_ticks()[0], time.process_time()
    start = clock()
    for i, pem in enumerate(csrs):
        a = clock()
        key = identity.csr_public_key(identity.load_csr(pem))
        b = clock()
        ca.issue_device(f"dev-{i:012x}", key, identity.new_serial())
        in_load += b - a
        in_issue += clock() - b
    seconds = clock() - start
    busy = (machine_cpu_ticks()[0] - busy0) / CLK_TCK / seconds
    other = max(0.0, busy - (time.process_time() - cpu0) / seconds)
    n = len(csrs)
    return CryptoResult(n / seconds, in_load / n * 1e6, in_issue / n * 1e6, other)


def phase_spec(name: str, token: str, host: str, sizes: Sizes) -> PhaseSpec:
    """A load phase; for registrations, with new simulated machines (made here, untimed)."""
    c = CONCURRENCY
    if name == HEALTHZ:
        n = sizes.healthz_warmup + sizes.healthz + c
        healthz = [build_request("GET", "/healthz", host)] * n
        return PhaseSpec(HEALTHZ, "fresh", healthz, c, 200, sizes.healthz_warmup)
    keepalive = name == KEEPALIVE
    if keepalive:
        warmup, count = sizes.keepalive_warmup, sizes.keepalive
    else:
        warmup, count = sizes.fresh_warmup, sizes.fresh
    requests = [
        build_request("POST", "/api/v1/register", host, body, keepalive=keepalive)
        for body in registration_bodies(token, warmup + count + c)
    ]
    return PhaseSpec(name, "keepalive" if keepalive else "fresh", requests, c, 201, warmup)


def prepare(stack: Stack) -> str:
    """A reusable registration token, and one registration checked in full."""
    status, created = stack.api(
        "POST", "/api/v1/tokens", {"group": "bench", "max_uses": None, "ttl_seconds": 3600}
    )
    if status != 201:
        raise SystemExit(f"token create failed: {status} {created}")
    token = str(created["token"])
    body = json.loads(registration_bodies(token, 1)[0])
    status, answer = stack.api("POST", "/api/v1/register", body)
    if status != 201 or not answer.get("created") or "BEGIN CERT" not in answer["certificate"]:
        raise SystemExit(f"sanity registration failed: {status} {answer}")
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run, not recorded")
    parser.add_argument("--rounds", type=int, help="rounds of all phases (default 3, quick 1)")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--retries", type=int, default=3, help="re-runs of a phase disturbed by other work"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append BENCHMARKS.md")
    parser.add_argument("--note", default="", help="added to the notes of the BENCHMARKS.md row")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20,
        help="before each phase, wait up to this many seconds for other work to stop",
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=180,
        help="seconds into the run after which phases no longer wait for quiet or re-run",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server during each load phase into DIR"
    )
    parser.add_argument(
        "--profile-format", choices=["svg", "txt"], default="svg", help="txt = collapsed stacks"
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (pauses the server)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds_wanted = args.rounds or sizes.rounds
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    def profile_out(n: int, spec: PhaseSpec) -> Path | None:
        slug = f"{spec.name.split()[0]}-{spec.mode}-round{n}.{args.profile_format}"
        return args.profile / slug if args.profile else None

    def patient() -> bool:
        return time.monotonic() - started < float(args.patience)

    def settle(what: str) -> None:
        if args.wait_quiet > 0 and patient():
            busy = wait_quiet(lambda: (), args.wait_quiet, OTHER_LIMIT, window=0.5)
            if busy >= OTHER_LIMIT:
                log(f"machine still {busy:.0%} busy with other work before {what}")

    def undisturbed(what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` again (up to --retries times) while other work on the machine
        takes more than OTHER_LIMIT cores of it: another job's tests are not our figures.
        Of disturbed attempts only, the least disturbed is kept."""
        results: list[T] = []
        for n in range(args.retries + 1):
            result = attempt()
            results.append(result)
            if result.other_cpu <= OTHER_LIMIT:
                return result
            again = n < args.retries and patient()
            then = "; again" if again else "; keeping the least disturbed, marked DISTURBED"
            log(f"{what} disturbed: other work used {result.other_cpu:.0%} CPU{then}")
            if not again:
                break
        return min(results, key=lambda r: r.other_cpu)

    started = time.monotonic()
    rev = git_describe()  # now: the server about to start runs the code of this moment
    rounds: list[Round] = []
    with Stack(env={"CORRAL_REGISTER_FAILURES_PER_MINUTE": "1000000"}) as stack:
        server = stack.server
        log(f"server pid {server.pid} on {server.url}, data {server.data_dir}")
        token = prepare(stack)
        host = f"127.0.0.1:{server.port}"
        ca = Pki(server.data_dir / "pki").load_ca()
        loadgen = LoadGenerator("127.0.0.1", server.port, args.procs)
        fleet = [1]  # devices in the server's database: the sanity registration so far
        try:
            for n in range(1, rounds_wanted + 1):

                def load_phase(name: str, n: int = n) -> PhaseResult:
                    spec = phase_spec(name, token, host, sizes)  # keys and CSRs: untimed
                    gc.collect()
                    settle(name)
                    with py_spy(server.pid, profile_out(n, spec), args.profile_native):
                        result = loadgen.run(spec, server.pid)
                    if spec.expect_status == 201:  # every success is one more device
                        before = fleet[0]
                        fleet[0] += result.requests - result.errors
                        result.context = f"devices {before}->{fleet[0]}"
                    log(f"round {n} {result.summary()}")
                    if result.errors:
                        log(f"  {result.errors} errors, e.g. {result.error_sample}")
                    return result

                def crypto_phase(n: int = n) -> CryptoResult:
                    csrs = [
                        identity.make_csr(identity.generate_key()).decode()
                        for _ in range(sizes.crypto)
                    ]
                    settle("crypto-only")
                    crypto = crypto_only(ca, csrs)
                    log(
                        f"round {n} crypto-only: {crypto.rate:.0f}/s (load_csr "
                        f"{crypto.load_csr_us:.0f} us + issue_device {crypto.issue_us:.0f} us)"
                        f", other {crypto.other_cpu:.0%}"
                    )
                    return crypto

                results = {
                    name: undisturbed(f"round {n} {name}", functools.partial(load_phase, name))
                    for name in (HEALTHZ, FRESH, KEEPALIVE)
                }
                rounds.append(Round(results, undisturbed(f"round {n} crypto", crypto_phase)))
        finally:
            loadgen.close()

    def rate(name: str) -> float:
        return median([r.phases[name].rate for r in rounds])

    def pooled(name: str, q: float) -> float:
        values = sorted(x for r in rounds for x in r.phases[name].latencies)
        return percentile(values, q) * 1000

    def server_ms(name: str) -> float:
        return median([r.phases[name].server_ms_per_req for r in rounds])

    def client_cpu(name: str) -> float:
        return median([r.phases[name].client_cpu for r in rounds])

    healthz, fresh, keep = rate(HEALTHZ), rate(FRESH), rate(KEEPALIVE)
    crypto_rate = median([r.crypto.rate for r in rounds])
    fresh_ratio = median([r.fresh_ratio for r in rounds])
    fresh_cpu_ratio = median([r.fresh_cpu_ratio for r in rounds])
    keep_ratio = median([r.keepalive_ratio for r in rounds])
    fresh_p50, fresh_p99 = pooled(FRESH, 50), pooled(FRESH, 99)
    keep_p50, keep_p99 = pooled(KEEPALIVE, 50), pooled(KEEPALIVE, 99)
    fresh_ok = fresh_ratio >= TARGET_FRESH_RATIO and fresh_p99 <= TARGET_FRESH_P99_MS
    keep_ok = keep_ratio >= TARGET_KEEPALIVE_RATIO
    errors = sum(p.errors for r in rounds for p in r.phases.values())
    measured = {name: sum(r.phases[name].measured for r in rounds) for name in rounds[0].phases}
    other = max(
        [p.other_cpu for r in rounds for p in r.phases.values()]
        + [r.crypto.other_cpu for r in rounds]
    )
    disturbed = f"; DISTURBED: other work used {other:.0%} CPU" if other > OTHER_LIMIT else ""
    spread = ", ".join(f"{r.fresh_ratio:.0%}/{r.keepalive_ratio:.0%}" for r in rounds)
    kept = ", ".join(
        r.phases[name].context.split()[-1] for r in rounds for name in (FRESH, KEEPALIVE)
    )
    cpu_ms = (
        f"server CPU ms/req healthz {server_ms(HEALTHZ):.2f}, fresh {server_ms(FRESH):.2f}, "
        f"keep-alive {server_ms(KEEPALIVE):.2f}, crypto-only {1000 / crypto_rate:.2f}"
    )
    print(
        f"registration bench ({'quick' if args.quick else 'full'}, {len(rounds)} round(s), "
        f"{CONCURRENCY} concurrent, {args.procs} load procs, {rev}): "
        f"fresh-TLS {fresh:.0f} reg/s p50 {fresh_p50:.0f} ms p99 {fresh_p99:.0f} ms "
        f"= {fresh_ratio:.0%} of healthz {healthz:.0f}/s "
        f"[target >=70% & p99 <=150 ms: {verdict(fresh_ok)}; "
        f"CPU-normalised {fresh_cpu_ratio:.0%}] | "
        f"keep-alive {keep:.0f} reg/s p50 {keep_p50:.0f} ms p99 {keep_p99:.0f} ms "
        f"= {keep_ratio:.0%} of crypto-only {crypto_rate:.0f}/s "
        f"[target >=30%: {verdict(keep_ok)}] | {cpu_ms} | per-round ratios {spread} | "
        f"errors {errors}{disturbed} | {time.monotonic() - started:.0f}s",
        flush=True,
    )
    if args.quick or args.no_record or args.profile:
        log("not recorded in BENCHMARKS.md (quick, --no-record or --profile run)")
    else:
        append_row(
            [
                today(),
                f"registration, {CONCURRENCY} concurrent (bench/registration.py)",
                f"fresh TLS {fresh:.0f} reg/s, p50 {fresh_p50:.0f} ms, p99 {fresh_p99:.0f} ms; "
                f"keep-alive {keep:.0f} reg/s, p99 {keep_p99:.0f} ms",
                f"healthz fresh TLS {healthz:.0f}/s; crypto-only {crypto_rate:.0f}/s",
                f"{fresh_ratio:.0%}; {keep_ratio:.0%}",
                f">=70% & p99 <=150 ms: {verdict(fresh_ok)}; >=30%: {verdict(keep_ok)}",
                f"median of {len(rounds)} round(s) (ratios {spread}); CPU-normalised fresh/healthz "
                f"{fresh_cpu_ratio:.0%}; {cpu_ms}; load-gen CPU healthz "
                f"{client_cpu(HEALTHZ):.0%}, fresh {client_cpu(FRESH):.0%}; measured "
                f"{measured[FRESH]} fresh, {measured[KEEPALIVE]} keep-alive; devices in the "
                f"database over each kept fresh, keep-alive phase {kept}; "
                f"errors {errors}{disturbed}; {rev}" + (f"; {args.note}" if args.note else ""),
            ]
        )
        log("appended a row to BENCHMARKS.md")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
