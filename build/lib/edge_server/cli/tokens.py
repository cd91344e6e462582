"""``corral token create|list|show|revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from edge_server.cli import duration, output
from edge_server.cli.client import OperatorClient
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column

COLUMNS: list[Column] = [
    ("id", lambda t: t["id"]),
    ("group", lambda t: t["group_name"]),
    ("uses", lambda t: f"{t['uses']}/{t['max_uses'] if t['max_uses'] is not None else '∞'}"),
    ("expires", lambda t: output.when(t["expires_at"])),
    ("revoked", lambda t: output.when(t["revoked_at"]) if t["revoked_at"] else "no"),
    ("labels", lambda t: output.labels(t["labels"])),
]


def parse_labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"bad label {item!r}", hint="use key=value")
            out[key.strip()] = value.strip()
    return out


def create(args: argparse.Namespace, api: OperatorClient) -> None:
    uses = None if args.uses == "unlimited" else int(args.uses)
    body = {
        "group": args.group,
        "labels": parse_labels(args.label),
        "ttl_seconds": duration.parse(args.ttl),
        "max_uses": uses,
        "description": args.description,
    }
    if args.name_template:
        body["name_template"] = args.name_template
    token = api.request("POST", "/api/v1/tokens", body)
    if args.output == "json":
        output.emit(token, "json")
    else:
        output.emit(token, "table", COLUMNS)
        print(f"\ntoken (shown once): {token['token']}")


def list_(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", "/api/v1/tokens")["items"], args.output, COLUMNS)


def show(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", f"/api/v1/tokens/{args.id}"), args.output, COLUMNS)


def revoke(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("DELETE", f"/api/v1/tokens/{args.id}"), args.output, COLUMNS)


def _uses(text: str) -> str:
    if text == "unlimited" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError("must be a positive integer or 'unlimited'")


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("token", help="registration tokens")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", parents=[common], help="create a token (shown once)")
    c.add_argument("--group", default="default")
    c.add_argument(
        "--label", "-l", action="append", default=[], help="key=value (templates allowed)"
    )
    c.add_argument("--ttl", default="24h", help="lifetime: 30m, 24h, 7d or never")
    c.add_argument("--uses", default="1", type=_uses, help="maximum devices, or 'unlimited'")
    c.add_argument("--name-template", help="device name template, e.g. edge-${dmi.product_uuid:8}")
    c.add_argument("--description", default="")
    c.set_defaults(func=create)
    ls = verbs.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    ls.set_defaults(func=list_)
    for name, func in (("show", show), ("revoke", revoke)):
        v = verbs.add_parser(name, parents=[common], help=f"{name} a token")
        v.add_argument("id")
        v.set_defaults(func=func)
