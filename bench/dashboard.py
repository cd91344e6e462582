"""The dashboard's devices page with 10,000 devices: server time per page, against a bare
JSON list of the same page (``GET /api/v1/devices``) timed in the same run.

1. ``corral serve`` starts once (first start: schema, admin), stops, and the fleet is written
   straight into its database (devices, certificates, state with conditions; labels
   ``site`` of 10, ``role`` of 3): registering 10,000 agents is what ``registration.py``
   measures, not this.
2. The server starts again; the bench signs in to the dashboard like a browser does.
3. It walks the whole fleet page by page (keyset, ``--limit`` per page), each page twice,
   interleaved: the HTML page (``/devices?after=…``) and the JSON page
   (``/api/v1/devices?after=…``), one keep-alive connection each; then the same for a
   filtered view (``site=site-3,role!=gateway`` and a search). Time per page is the request's
   wall time on loopback: the server's time plus a small constant.

Prints one line (median and p95 per page, HTML / JSON ratio); appends a row to BENCHMARKS.md
unless ``--no-record``. Target: HTML page ≤ 150 ms.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import append_row, git_describe, log, median, percentile, today, verdict  # noqa: E402
from bench.stack import Stack  # noqa: E402
from edge_server.store import connect  # noqa: E402
from edge_server.store import devices as devices_store  # noqa: E402

TARGET_MS = 150.0
SITES = 10
ROLES = ("gateway", "camera", "sensor")
FILTER = {"selector": "site=site-3,role!=gateway", "q": "edge-0"}


def seed_fleet(db_path: Path, n: int) -> None:
    """``n`` devices, as registration and status reports would have left them."""
    db = connect(db_path)
    now = time.time()
    conditions = json.dumps(
        [
            {"type": "config", "status": "Applied", "reason": "Applied", "message": "1 file(s)"},
            {"type": "os", "status": "Healthy", "version": "1.4.2", "reason": "", "message": ""},
            {
                "type": "k3s",
                "status": "Ready",
                "version": "v1.30.4+k3s1",
                "reason": "",
                "message": "",
            },
        ]
    )
    try:
        db.conn.execute("BEGIN IMMEDIATE")
        for i in range(n):
            device_id = f"dev-{i:012x}"
            labels = {"site": f"site-{i % SITES}", "role": ROLES[i % len(ROLES)]}
            devices_store.upsert(
                db,
                devices_store.DeviceWrite(
                    id=device_id,
                    name=f"edge-{i:06d}",
                    machine_id=f"machine-{i}",
                    dmi_uuid=None,
                    public_key_sha256=f"{i:064x}",
                    group_name="default",
                    labels_local=labels,
                    labels_token={},
                    facts={"hostname": f"edge-{i:06d}", "arch": "x86_64", "kernel": "6.1"},
                    agent_version="0.1.0",
                    protocol_version=1,
                    token_id="bench",  # noqa: S106 - a token id, not a secret
                ),
                {},
            )
            devices_store.add_certificate(db, 10**12 + i, device_id, now, now + 365 * 86400)
            generation = 2
            observed = 2 if i % 17 else 1
            db.execute(
                "INSERT INTO device_state (device_id, generation, observed_generation,"
                " conditions, online, last_seen, status_at, groups)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    generation,
                    observed,
                    conditions,
                    int(i % 5 != 0),
                    now - i % 600,
                    now - i % 900,
                    json.dumps([f"site-{i % SITES}"]),
                ),
            )
        db.conn.execute("COMMIT")
    finally:
        db.conn.close()


def sign_in(stack: Stack) -> requests.Session:
    http = requests.Session()
    password = re.search(r"admin password:\s+(\S+)", stack.server.log())
    assert password, "no admin password in the first start's output"
    ca = str(stack.server.ca)
    form = http.get(stack.url + "/signin", verify=ca, timeout=30).text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token
    answer = http.post(
        stack.url + "/signin",
        data={"csrf": token.group(1), "username": "admin", "password": password.group(1)},
        verify=ca,
        timeout=30,
        allow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return http


def walk(
    stack: Stack, html: requests.Session, limit: int, query: dict[str, str], pages: int
) -> tuple[list[float], list[float], int]:
    """Walk the view page by page: (HTML ms per page, JSON ms per page, devices seen)."""
    ca = str(stack.server.ca)
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {stack.server.admin_token}"
    html_ms: list[float] = []
    json_ms: list[float] = []
    after: str | None = None
    seen = 0
    for _ in range(pages):
        params = {**query, "limit": str(limit), **({"after": after} if after else {})}
        started = time.perf_counter()
        page = html.get(f"{stack.url}/devices?{urlencode(params)}", verify=ca, timeout=30)
        html_ms.append((time.perf_counter() - started) * 1000)
        assert page.status_code == 200, page.status_code
        api_params = {k if k != "q" else "_q": v for k, v in params.items()}
        api_params.pop("_q", None)  # the API has no search: the same page without it
        started = time.perf_counter()
        listed = api.get(
            f"{stack.url}/api/v1/devices?{urlencode(api_params)}", verify=ca, timeout=30
        )
        json_ms.append((time.perf_counter() - started) * 1000)
        assert listed.status_code == 200, listed.text
        seen += page.text.count("<tr data-id=")
        found = re.search(
            r'href="/devices\?[^"]*after=([^&"]+)[^"]*" class="button" rel="next"', page.text
        )
        if found is None:
            break
        after = found.group(1)
    return html_ms, json_ms, seen


def run(args: argparse.Namespace) -> int:
    with Stack() as stack:
        stack.server.stop()
        log(f"writing {args.devices} devices into {stack.server.db_path}")
        seed_fleet(stack.server.db_path, args.devices)
        stack.start()
        html = sign_in(stack)
        log("walking every page, HTML and JSON interleaved")
        all_html, all_json, seen = walk(stack, html, args.limit, {}, args.devices // args.limit + 1)
        log(f"saw {seen} devices; now a filtered view ({FILTER})")
        f_html, f_json, f_seen = walk(stack, html, args.limit, FILTER, 50)
    h50, h95 = median(all_html), percentile(all_html, 95)
    j50, j95 = median(all_json), percentile(all_json, 95)
    fh50, fj50 = median(f_html), median(f_json)
    ok = h95 <= TARGET_MS and median(f_html) <= TARGET_MS
    load = Path("/proc/loadavg").read_text().split()[0]
    line = (
        f"dashboard devices page, {args.devices} devices, {args.limit}/page: HTML p50 {h50:.1f} ms"
        f" p95 {h95:.1f} ms; JSON p50 {j50:.1f} ms p95 {j95:.1f} ms; ratio {h50 / j50:.2f}x;"
        f" filtered HTML p50 {fh50:.1f} ms (JSON {fj50:.1f}); target <= {TARGET_MS:.0f} ms:"
        f" {verdict(ok)} (load average {load})"
    )
    print(line)
    if not args.no_record:
        append_row(
            [
                today(),
                f"dashboard devices page, {args.devices} devices, {args.limit} per page"
                " (bench/dashboard.py)",
                f"HTML page p50 {h50:.1f} ms, p95 {h95:.1f} ms; filtered p50 {fh50:.1f} ms",
                f"JSON page (/api/v1/devices) p50 {j50:.1f} ms, p95 {j95:.1f} ms; filtered"
                f" {fj50:.1f} ms",
                f"{h50 / j50:.2f}x",
                f"HTML <= {TARGET_MS:.0f} ms per page: {verdict(ok)}",
                f"{len(all_html)} pages walked by keyset ({seen} rows), filtered view"
                f" {FILTER['selector']!r} + search {FILTER['q']!r}: {len(f_html)} pages"
                f" ({f_seen} rows); loopback wall time per request, keep-alive, guard off;"
                f" 2 shared cores, load average {load} at the end (other engineers' work);"
                f" {git_describe()}",
            ]
        )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--no-record", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
