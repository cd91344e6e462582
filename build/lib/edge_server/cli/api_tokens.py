"""``corral api-token create|list|revoke``."""

from __future__ import annotations

import argparse
from typing import Any

from edge_server.cli import output
from edge_server.cli.client import OperatorClient
from edge_server.cli.output import Column

COLUMNS: list[Column] = [
    ("id", lambda t: t["id"]),
    ("user", lambda t: t["username"]),
    ("created", lambda t: output.when(t.get("created_at"))),
    ("revoked", lambda t: output.when(t.get("revoked_at")) if t.get("revoked_at") else "no"),
    ("description", lambda t: t.get("description") or ""),
]


def create(args: argparse.Namespace, api: OperatorClient) -> None:
    token = api.request(
        "POST", "/api/v1/api-tokens", {"username": args.user, "description": args.description}
    )
    output.emit(
        token,
        "json" if args.output == "json" else "table",
        [("id", lambda t: t["id"]), ("token", lambda t: t["token"])],
    )


def list_(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", "/api/v1/api-tokens")["items"], args.output, COLUMNS)


def revoke(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("DELETE", f"/api/v1/api-tokens/{args.id}"), "json")


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("api-token", help="operator API tokens")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", parents=[common])
    c.add_argument("--user", default="admin")
    c.add_argument("--description", default="")
    c.set_defaults(func=create)
    verbs.add_parser("list", parents=[common]).set_defaults(func=list_)
    r = verbs.add_parser("revoke", parents=[common])
    r.add_argument("id")
    r.set_defaults(func=revoke)
