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
saturates the server's. The generator therefore runs in separate processes (``--procs``,
default 2, so it can take whatever CPU the server leaves), each an ``asyncio`` loop speaking
pre-built HTTP/1.1 over TLS streams (no HTTP client library, no per-request JSON, no GC during
a phase): the cheapest Python client that still does a full TLS handshake per connection. It
skips certificate-chain verification, which the server's work does not depend on. All keys,
CSRs and request bodies are generated before timing. Figures come from the steady state only
(after a warm-up, before the drain), and each phase also reports the server's CPU per request,
which does not depend on how much CPU the generator took.

Run: ``.venv/bin/python bench/registration.py [--quick] [--profile DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.common; the real
# ``registration`` package ahead of this file, which shares its name

import argparse
import gc
import json
import time
import uuid
from dataclasses import dataclass

from bench.common import (
    LoadGenerator,
    PhaseResult,
    PhaseSpec,
    append_benchmark_row,
    build_request,
    git_describe,
    log,
    py_spy,
    running_server,
    today,
    wait_for_quiet,
)
from edge_server.pki import Pki
from registration import identity
from registration.protocol import PROTOCOL_VERSION, Cpu, Facts, Memory, RegisterRequest

CONCURRENCY = 64
TARGET_FRESH_RATIO = 0.70
TARGET_FRESH_P99_MS = 150.0
TARGET_KEEPALIVE_RATIO = 0.30


@dataclass(frozen=True)
class Sizes:
    """Requests per phase: ``warmup`` + ``count`` measured, plus the drain."""

    healthz_warmup: int
    healthz: int
    fresh_warmup: int
    fresh: int
    keepalive_warmup: int
    keepalive: int
    crypto: int


FULL = Sizes(300, 3000, 200, 2000, 300, 3000, 3000)
QUICK = Sizes(50, 300, 50, 300, 100, 400, 300)


@dataclass(frozen=True)
class CryptoResult:
    rate: float
    load_csr_us: float
    issue_us: float


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
    start = clock()
    for i, pem in enumerate(csrs):
        a = clock()
        key = identity.csr_public_key(identity.load_csr(pem))
        b = clock()
        ca.issue_device(f"dev-{i:012x}", key, identity.new_serial())
        in_load += b - a
        in_issue += clock() - b
    seconds = clock() - start
    n = len(csrs)
    return CryptoResult(n / seconds, in_load / n * 1e6, in_issue / n * 1e6)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run, not recorded")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--no-record", action="store_true", help="do not append BENCHMARKS.md")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="before each phase, wait up to this many seconds for other work to stop",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server during each load phase into DIR/*.svg"
    )
    parser.add_argument(
        "--profile-format", choices=["svg", "txt"], default="svg", help="txt = collapsed stacks"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    def profile_out(phase: str) -> Path | None:
        return args.profile / f"{phase}.{args.profile_format}" if args.profile else None

    env = {"CORRAL_REGISTER_FAILURES_PER_MINUTE": "1000000"}
    started = time.monotonic()
    quiet = "" if args.wait_quiet <= 0 else f" (waits up to {args.wait_quiet:.0f}s for quiet)"

    def settle(what: str) -> None:
        if args.wait_quiet > 0:
            busy = wait_for_quiet(args.wait_quiet)
            if busy >= 0.15:
                log(f"machine still {busy:.0%} busy with other work before {what}{quiet}")

    with running_server(env) as server:
        log(f"server pid {server.pid} on {server.url}, data {server.data_dir}")
        status, created = server.request(
            "POST", "/api/v1/tokens", {"group": "bench", "max_uses": None, "ttl_seconds": 3600}
        )
        if status != 201:
            raise SystemExit(f"token create failed: {status} {created}")
        token = str(created["token"])
        host = f"127.0.0.1:{server.port}"

        # Sanity: one registration, checked in full, before anything is timed.
        status, answer = server.request(
            "POST", "/api/v1/register", json.loads(registration_bodies(token, 1)[0]), token=None
        )
        if status != 201 or not answer.get("created") or "BEGIN CERT" not in answer["certificate"]:
            raise SystemExit(f"sanity registration failed: {status} {answer}")

        log("generating keys and CSRs")
        c = CONCURRENCY
        n_fresh = sizes.fresh_warmup + sizes.fresh + c
        n_keep = sizes.keepalive_warmup + sizes.keepalive + c
        bodies = registration_bodies(token, n_fresh + n_keep)
        fresh_reqs = [build_request("POST", "/api/v1/register", host, b) for b in bodies[:n_fresh]]
        keep_reqs = [
            build_request("POST", "/api/v1/register", host, b, keepalive=True)
            for b in bodies[n_fresh:]
        ]
        healthz_req = build_request("GET", "/healthz", host)
        crypto_csrs = [
            identity.make_csr(identity.generate_key()).decode() for _ in range(sizes.crypto)
        ]
        del bodies
        gc.collect()

        phases = [
            PhaseSpec(
                "healthz (fresh TLS)",
                "fresh",
                [healthz_req] * (sizes.healthz_warmup + sizes.healthz + c),
                c,
                200,
                sizes.healthz_warmup,
            ),
            PhaseSpec("register (fresh TLS)", "fresh", fresh_reqs, c, 201, sizes.fresh_warmup),
            PhaseSpec(
                "register (keep-alive)", "keepalive", keep_reqs, c, 201, sizes.keepalive_warmup
            ),
        ]
        loadgen = LoadGenerator("127.0.0.1", server.port, args.procs)
        results: dict[str, PhaseResult] = {}
        try:
            for spec in phases:
                settle(spec.name)
                log(f"phase {spec.name}: {len(spec.requests)} requests, {c} concurrent")
                slug = spec.name.split()[0] + ("-" + spec.mode)
                with py_spy(server.pid, profile_out(slug)):
                    result = loadgen.run(spec, server.pid)
                results[spec.name] = result
                log(result.summary())
                if result.errors:
                    log(f"  {result.errors} errors, e.g. {result.error_sample}")
        finally:
            loadgen.close()

        settle("crypto-only")
        log(f"phase crypto-only: {sizes.crypto} x load_csr + issue_device on one core")
        ca = Pki(server.data_dir / "pki").load_ca()
        crypto = crypto_only(ca, crypto_csrs)
        log(
            f"crypto-only: {crypto.rate:.0f}/s (load_csr {crypto.load_csr_us:.0f} us, "
            f"issue_device {crypto.issue_us:.0f} us)"
        )

    healthz = results["healthz (fresh TLS)"]
    fresh = results["register (fresh TLS)"]
    keep = results["register (keep-alive)"]
    fresh_ratio = fresh.rate / healthz.rate
    keep_ratio = keep.rate / crypto.rate
    # The same ratio from the server's own CPU per request: what one dedicated server core
    # would do, independent of how much CPU the generator took from it.
    fresh_cpu_ratio = healthz.server_ms_per_req / fresh.server_ms_per_req
    fresh_ok = fresh_ratio >= TARGET_FRESH_RATIO and fresh.p99_ms <= TARGET_FRESH_P99_MS
    keep_ok = keep_ratio >= TARGET_KEEPALIVE_RATIO
    errors = healthz.errors + fresh.errors + keep.errors
    other = max(r.other_cpu for r in results.values())
    disturbed = f"; DISTURBED: other work used up to {other:.0%} CPU" if other > 0.15 else ""
    rev = git_describe()
    mode = "quick" if args.quick else "full"
    print(
        f"registration bench ({mode}, {c} concurrent, {args.procs} load procs, {rev}): "
        f"fresh-TLS {fresh.rate:.0f} reg/s p50 {fresh.p50_ms:.0f} ms p99 {fresh.p99_ms:.0f} ms "
        f"= {fresh_ratio:.0%} of healthz {healthz.rate:.0f}/s (p99 {healthz.p99_ms:.0f} ms) "
        f"[target >=70% & p99 <=150 ms: {verdict(fresh_ok)}] | "
        f"keep-alive {keep.rate:.0f} reg/s p50 {keep.p50_ms:.0f} ms p99 {keep.p99_ms:.0f} ms "
        f"= {keep_ratio:.0%} of crypto-only {crypto.rate:.0f}/s "
        f"[target >=30%: {verdict(keep_ok)}] | "
        f"server CPU ms/req: healthz {healthz.server_ms_per_req:.2f}, "
        f"fresh {fresh.server_ms_per_req:.2f}, keep-alive {keep.server_ms_per_req:.2f}, "
        f"crypto {1000 / crypto.rate:.2f} (CPU-normalised fresh/healthz {fresh_cpu_ratio:.0%}) "
        f"| errors {errors}{disturbed} | {time.monotonic() - started:.0f}s",
        flush=True,
    )
    if args.quick or args.no_record or args.profile:
        log("not recorded in BENCHMARKS.md (quick, --no-record or --profile run)")
    else:
        append_benchmark_row(
            [
                today(),
                f"registration, {c} concurrent (bench/registration.py)",
                f"fresh TLS {fresh.rate:.0f} reg/s, p50 {fresh.p50_ms:.0f} ms, "
                f"p99 {fresh.p99_ms:.0f} ms; keep-alive {keep.rate:.0f} reg/s",
                f"healthz fresh TLS {healthz.rate:.0f}/s; crypto-only {crypto.rate:.0f}/s",
                f"{fresh_ratio:.0%}; {keep_ratio:.0%}",
                f">=70% & p99 <=150 ms ({verdict(fresh_ok)}); >=30% ({verdict(keep_ok)})",
                f"server CPU ms/req healthz {healthz.server_ms_per_req:.2f}, fresh "
                f"{fresh.server_ms_per_req:.2f}, keep-alive {keep.server_ms_per_req:.2f} "
                f"(CPU-normalised fresh/healthz {fresh_cpu_ratio:.0%}); "
                f"load-gen {healthz.client_cpu:.0%}/{fresh.client_cpu:.0%} CPU; "
                f"{fresh.measured}/{keep.measured} measured; errors {errors}{disturbed}; {rev}",
            ]
        )
        log("appended a row to BENCHMARKS.md")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
