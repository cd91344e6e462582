"""``corral device list|show|label|delete|reset``."""

from __future__ import annotations

import argparse
from typing import Any

from edge_server.cli import groups, output
from edge_server.cli.client import ApiClient
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column


def _conditions(d: dict[str, Any]) -> str:
    return ",".join(f"{c['type']}={c['status']}" for c in d.get("conditions") or []) or "-"


COLUMNS: list[Column] = [
    ("id", lambda d: d["id"]),
    ("name", lambda d: d["name"]),
    ("state", lambda d: "online" if d.get("online") else "offline"),
    ("gen", lambda d: f"{d.get('observed_generation', 0)}/{d.get('generation', 0)}"),
    ("conditions", _conditions),
    ("last seen", lambda d: output.when(d.get("last_seen"))),
    ("cpus", lambda d: d["facts"]["cpu"]["count"]),
    ("memory", lambda d: f"{d['facts']['memory']['total_bytes'] // 2**20} MiB"),
    ("labels", lambda d: output.labels(d["labels"])),
]


def list_(args: argparse.Namespace, api: ApiClient) -> None:
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


def show(args: argparse.Namespace, api: ApiClient) -> None:
    output.emit(api.request("GET", f"/api/v1/devices/{args.id}"), "json")


def label(args: argparse.Namespace, api: ApiClient) -> None:
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


def spec(args: argparse.Namespace, api: ApiClient) -> None:
    output.emit(api.request("GET", f"/api/v1/devices/{args.id}/spec"), "json")


def override(args: argparse.Namespace, api: ApiClient) -> None:
    shown = api.request("GET", f"/api/v1/devices/{args.id}")
    body = {} if args.clear else groups.apply_flags(shown.get("override") or {}, args)
    output.emit(api.request("PUT", f"/api/v1/devices/{args.id}/override", body), "json")


def delete(args: argparse.Namespace, api: ApiClient) -> None:
    output.emit(
        api.request("DELETE", f"/api/v1/devices/{args.id}"),
        args.output,
        [("id", lambda d: d["id"]), ("status", lambda d: d["status"])],
    )


def reset(args: argparse.Namespace, api: ApiClient) -> None:
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
    sh = verbs.add_parser("show", parents=[common], help="show one device (JSON)")
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
