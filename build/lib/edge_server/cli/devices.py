"""``corral device list|show|label|delete|reset``."""

from __future__ import annotations

import argparse
from typing import Any

from edge_server.cli import groups, output
from edge_server.cli.client import OperatorClient
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column


def _conditions(d: dict[str, Any]) -> str:
    return ",".join(f"{c['type']}={c['status']}" for c in d.get("conditions") or []) or "-"


def installed(d: dict[str, Any], kind: str) -> str | None:
    """The installed version of ``kind`` (``os``, ``k3s``) its reconciler last reported."""
    conditions = d.get("conditions")
    if conditions is None:
        conditions = (d.get("reported") or {}).get("conditions")
    for c in conditions or []:
        if c.get("type") == kind and c.get("version"):
            return str(c["version"])
    return None


COLUMNS: list[Column] = [
    ("id", lambda d: d["id"]),
    ("name", lambda d: d["name"]),
    ("state", lambda d: "online" if d.get("online") else "offline"),
    ("gen", lambda d: f"{d.get('observed_generation', 0)}/{d.get('generation', 0)}"),
    ("conditions", _conditions),
    ("os", lambda d: installed(d, "os") or "-"),
    ("k3s", lambda d: installed(d, "k3s") or "-"),
    ("last seen", lambda d: output.when(d.get("last_seen"))),
    ("cpus", lambda d: d["facts"]["cpu"]["count"]),
    ("memory", lambda d: f"{d['facts']['memory']['total_bytes'] // 2**20} MiB"),
    ("labels", lambda d: output.labels(d["labels"])),
]


def list_(args: argparse.Namespace, api: OperatorClient) -> None:
    items: list[dict[str, Any]] = []
    after = args.after
    while True:
        page = api.request(
            "GET", "/api/v1/devices", selector=args.selector, limit=args.limit or 500, after=after
        )
        items += page["items"]
        after = page["next"]
        if args.limit or not after:
            break
    output.emit(items, args.output, COLUMNS)


def _condition(c: dict[str, Any]) -> str:
    version = f"(version {c['version']})" if c.get("version") else None
    return " ".join(filter(None, [c["status"], c.get("reason"), c.get("message"), version]))


def _label_lines(d: dict[str, Any]) -> list[tuple[str, Any]]:
    sources = d.get("label_sources") or {}
    lines = []
    for key, value in sorted((d.get("labels") or {}).items()):
        origin = [
            name for name in ("local", "token", "operator") if key in (sources.get(name) or {})
        ]
        lines.append((key, f"{value}  ({', '.join(origin) or 'template'})"))
    return lines


def _fact_lines(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    cpu = facts.get("cpu") or {}
    lines: list[tuple[str, Any]] = [
        ("hostname", facts.get("hostname")),
        ("cpu", f"{cpu.get('count', 0)} x {cpu.get('model') or 'unknown'}"),
        ("memory", output.size((facts.get("memory") or {}).get("total_bytes"))),
        ("arch", facts.get("arch")),
        ("kernel", facts.get("kernel")),
    ]
    lines += [(f"dmi {k}", v) for k, v in sorted((facts.get("dmi") or {}).items())]
    for disk in facts.get("disks") or []:
        removable = ", removable" if disk.get("removable") else ""
        model = disk.get("model") or "unknown model"
        text = f"{output.size(disk.get('size_bytes'))}, {model}{removable}"
        lines.append((f"disk {disk['name']}", text))
    lines += [(f"nic {n['name']}", n.get("mac")) for n in facts.get("nics") or []]
    return lines


def _spec_summary(spec: dict[str, Any] | None) -> list[tuple[str, Any]]:
    spec = spec or {}
    os_spec = spec.get("os") or {}
    k3s = spec.get("k3s") or {}
    return [
        ("os", os_spec.get("version") or "(not managed)"),
        ("k3s", f"{k3s['version']} ({k3s.get('role') or 'auto'})" if k3s.get("version") else None),
        ("bundles", ", ".join(b["name"] for b in spec.get("bundles") or []) or None),
        ("config files", ", ".join(f["path"] for f in spec.get("config") or []) or None),
    ]


def view(d: dict[str, Any]) -> list[output.Section]:
    """``corral device show``: who the device is, what it is, what it should run and does."""
    desired = d.get("desired") or {}
    reported = d.get("reported") or {}
    generation, observed = desired.get("generation", 0), reported.get("observed_generation", 0)
    sync = "in sync" if d.get("in_sync") else "not in sync"
    presence = "online" if d.get("online") else "offline"
    seen = d.get("last_seen")
    presence += f", last seen {output.when(seen)}" if seen is not None else ", never seen"
    certs = d.get("certificates") or []
    return [
        (
            None,
            [
                ("id", d["id"]),
                ("name", d["name"]),
                ("group", d.get("group")),
                ("groups", ", ".join(d.get("groups") or []) or None),
                ("presence", presence),
                ("registered", output.when(d.get("registered_at"))),
                ("agent", d.get("agent_version")),
            ],
        ),
        ("Labels", _label_lines(d)),
        ("Facts", _fact_lines(d.get("facts") or {})),
        (
            "Desired vs reported",
            [
                ("generation", f"desired {generation}, observed {observed} ({sync})"),
                *_spec_summary(desired.get("spec")),
                ("os installed", installed(d, "os") or "unknown"),
                ("k3s installed", installed(d, "k3s") or "unknown"),
                ("override", "yes" if d.get("override") else "none"),
                ("last status", output.when(reported.get("status_at"))),
                ("acked seq", reported.get("acked_seq")),
            ],
        ),
        (
            "Conditions",
            [(c["type"], _condition(c)) for c in reported.get("conditions") or []],
        ),
        (
            "Certificates",
            [
                (
                    c["serial"],
                    f"expires {output.when(c.get('not_after'))}"
                    + (f", revoked {output.when(c['revoked_at'])}" if c.get("revoked_at") else ""),
                )
                for c in certs
            ],
        ),
    ]


def show(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit_view(api.request("GET", f"/api/v1/devices/{args.id}"), args.output, view)


def label(args: argparse.Namespace, api: OperatorClient) -> None:
    changes: dict[str, str | None] = {}
    for item in args.labels:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"bad label {item!r}", hint="use key=value to set, key- to remove")
        changes[key] = value
    output.emit(
        api.request("PATCH", f"/api/v1/devices/{args.id}/labels", {"labels": changes}),
        args.output,
        COLUMNS,
    )


def spec(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", f"/api/v1/devices/{args.id}/spec"), "json")


def override(args: argparse.Namespace, api: OperatorClient) -> None:
    shown = api.request("GET", f"/api/v1/devices/{args.id}")
    body = {} if args.clear else groups.apply_flags(shown.get("override") or {}, args)
    output.emit(api.request("PUT", f"/api/v1/devices/{args.id}/override", body), "json")


def delete(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(
        api.request("DELETE", f"/api/v1/devices/{args.id}"),
        args.output,
        [("id", lambda d: d["id"]), ("status", lambda d: d["status"])],
    )


def reset(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(
        api.request("POST", f"/api/v1/devices/{args.id}/reset"),
        args.output,
        [("id", lambda d: d["id"]), ("status", lambda d: d["status"])],
    )


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("device", help="device inventory")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", parents=[common], help="list devices")
    ls.add_argument("-l", "--selector", help="label selector, e.g. site=eu,role!=test")
    ls.add_argument("--limit", type=int, help="one page of at most this many")
    ls.add_argument("--after", help="page after this device id")
    ls.set_defaults(func=list_)
    sh = verbs.add_parser("show", parents=[common], help="show one device (-o json: as JSON)")
    sh.add_argument("id")
    sh.set_defaults(func=show)
    lb = verbs.add_parser("label", parents=[common], help="set key=value or remove key- labels")
    lb.add_argument("id")
    lb.add_argument("labels", nargs="+")
    lb.set_defaults(func=label)
    sp = verbs.add_parser("spec", parents=[common], help="the device's computed spec (JSON)")
    sp.add_argument("id")
    sp.set_defaults(func=spec)
    ov = verbs.add_parser("override", parents=[common], help="per-device spec override")
    ov.add_argument("id")
    ov.add_argument("--clear", action="store_true", help="remove the override")
    groups.add_spec_flags(ov)
    ov.set_defaults(func=override)
    for name, func, text in (
        ("delete", delete, "delete a device and revoke its certificates"),
        ("reset", reset, "forget a device's key so its machine can register anew"),
    ):
        v = verbs.add_parser(name, parents=[common], help=text)
        v.add_argument("id")
        v.set_defaults(func=func)
