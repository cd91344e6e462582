"""``corral group create|set|list|show|delete``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_server.cli import output
from edge_server.cli.client import OperatorClient
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column
from registration import templating

COLUMNS: list[Column] = [
    ("name", lambda g: g["name"]),
    ("priority", lambda g: g["priority"]),
    ("selector", lambda g: g["selector"] or "(all devices)"),
    ("os", lambda g: (g["spec"].get("os") or {}).get("version")),
    ("k3s", lambda g: (g["spec"].get("k3s") or {}).get("version")),
    ("files", lambda g: len(g["spec"].get("config") or [])),
    ("bundles", lambda g: len(g["spec"].get("bundles") or [])),
]


def parse_file(text: str, mode: str | None) -> dict[str, Any]:
    """``/etc/motd=hello`` or ``/etc/motd=@local-file``; mode from ``--mode`` or 0644."""
    path, sep, value = text.partition("=")
    if not sep or not path.startswith("/"):
        raise CliError(f"bad --file {text!r}", hint="use /abs/path=content or /abs/path=@localfile")
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text()
        except OSError as e:
            raise CliError(f"cannot read {value[1:]}: {e.strerror}") from e
    try:
        file_mode = int(mode or "0644", 8)
    except ValueError as e:
        raise CliError(f"bad --mode {mode!r}", hint="octal, e.g. 0640") from e
    return {"path": path, "mode": file_mode, "content": value}


def parse_bundle(text: str) -> dict[str, Any]:
    """``NAME=@file.yaml`` (or ``NAME=inline yaml``): a bundle, checked to be YAML."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise CliError(f"bad --bundle {text!r}", hint="use NAME=@file.yaml")
    source = "the --bundle value"
    if value.startswith("@"):
        source = value[1:]
        try:
            value = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read {source}: {getattr(e, 'strerror', e)}") from e
    try:
        # Checked as a device would get it: placeholders (``${device.name}``) rendered.
        documents = list(yaml.safe_load_all(templating.render_document(value, {})))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise CliError(
            f"bundle {name}: {source} is not YAML{where}: {problem}",
            hint="a bundle is Kubernetes YAML or a HelmChart object",
        ) from e
    if not any(isinstance(d, dict) for d in documents) or any(
        d is not None and not isinstance(d, dict) for d in documents
    ):
        raise CliError(
            f"bundle {name}: {source} holds no Kubernetes objects",
            hint="each YAML document must be a mapping (apiVersion, kind, metadata, ...)",
        )
    return {"name": name, "content": value}


def apply_flags(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Apply ``corral group set``/``device override`` flags to a spec patch."""
    spec = dict(spec)
    if args.os_version is not None or args.allow_downgrade is not None:
        os_spec = dict(spec.get("os") or {})
        if args.os_version is not None:
            os_spec["version"] = args.os_version
        if args.allow_downgrade is not None:
            os_spec["allow_downgrade"] = args.allow_downgrade
        spec["os"] = os_spec
    if args.k3s_version is not None:
        # The K3s role is the server's to decide (label a device corral.dev/k3s-role=server).
        spec["k3s"] = {**(spec.get("k3s") or {}), "version": args.k3s_version}
    if args.file or args.remove_file or args.clear_files:
        files = {} if args.clear_files else {f["path"]: f for f in spec.get("config") or []}
        for path in args.remove_file:
            files.pop(path, None)
        for text in args.file:
            new = parse_file(text, args.mode)
            files[new["path"]] = new
        spec["config"] = [files[p] for p in sorted(files)]
    if args.bundle or args.remove_bundle or args.clear_bundles:
        bundles = {} if args.clear_bundles else {b["name"]: b for b in spec.get("bundles") or []}
        for name in args.remove_bundle:
            bundles.pop(name, None)
        for text in args.bundle:
            new = parse_bundle(text)
            bundles[new["name"]] = new
        spec["bundles"] = [bundles[n] for n in sorted(bundles)]
    return spec


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--os-version")
    p.add_argument(
        "--allow-downgrade",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the OS version go below the installed one",
    )
    p.add_argument("--k3s-version")
    p.add_argument("--file", action="append", default=[], help="/path=content or /path=@local")
    p.add_argument("--mode", help="octal mode for the --file entries (default 0644)")
    p.add_argument("--remove-file", action="append", default=[], metavar="PATH")
    p.add_argument("--clear-files", action="store_true")
    p.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="NAME=@FILE",
        help="a bundle (Kubernetes YAML or HelmChart) from a file; repeatable",
    )
    p.add_argument("--remove-bundle", action="append", default=[], metavar="NAME")
    p.add_argument("--clear-bundles", action="store_true")


def create(args: argparse.Namespace, api: OperatorClient) -> None:
    body = {
        "name": args.name,
        "selector": args.selector or "",
        "priority": args.priority,
        "spec": apply_flags({}, args),
    }
    output.emit(api.request("POST", "/api/v1/groups", body), args.output, COLUMNS)


def set_(args: argparse.Namespace, api: OperatorClient) -> None:
    group = api.request("GET", f"/api/v1/groups/{args.name}")
    body: dict[str, Any] = {"spec": apply_flags(group["spec"], args)}
    if args.selector is not None:
        body["selector"] = args.selector
    if args.priority is not None:
        body["priority"] = args.priority
    result = api.request("PATCH", f"/api/v1/groups/{args.name}", body)
    output.emit(result, args.output, COLUMNS)
    if args.output != "json":
        sys.stdout.write(f"{result['devices_changed']} device(s) got a new generation\n")


def list_(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", "/api/v1/groups")["items"], args.output, COLUMNS)


def show(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("GET", f"/api/v1/groups/{args.name}"), "json")


def delete(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit(api.request("DELETE", f"/api/v1/groups/{args.name}"), "json")


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("group", help="groups: selectors, priorities and desired state")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", parents=[common], help="create a group")
    c.add_argument("name")
    c.add_argument("--selector", "-l", default="", help="label selector, e.g. site=eu,tier!=lab")
    c.add_argument("--priority", type=int, default=0, help="higher wins")
    add_spec_flags(c)
    c.set_defaults(func=create)
    s = verbs.add_parser("set", parents=[common], help="change a group's desired state")
    s.add_argument("name")
    s.add_argument("--selector", "-l")
    s.add_argument("--priority", type=int)
    add_spec_flags(s)
    s.set_defaults(func=set_)
    verbs.add_parser("list", parents=[common], help="list groups").set_defaults(func=list_)
    for name, func in (("show", show), ("delete", delete)):
        v = verbs.add_parser(name, parents=[common], help=f"{name} a group")
        v.add_argument("name")
        v.set_defaults(func=func)
