"""``corral image seed`` (a seeded copy of the base ISO, written locally) and
``corral image import-base`` (the base ISO into the server's mirror, for seed downloads)."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any

from edge_server.cli import output
from edge_server.cli.artifacts import COLUMNS, upload
from edge_server.cli.client import OperatorClient
from edge_server.cli.errors import CliError
from node_image.agent.register import fetch_verified_ca
from node_image.errors import AgentError
from node_image.image import seedslot
from registration import seed as seed_doc
from registration import tokens
from registration.artifacts import BASE_ISO_KIND
from registration.errors import RegistrationError


def add_parsers(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "seed",
        help="write a copy of the base ISO with a seed (server, token, labels, network)",
        description="Copy the base ISO and write a seed into its seed slot; nothing else "
        "in the image changes. The server's CA is checked against the token first.",
    )
    p.add_argument("--base", type=Path, required=True, help="the base ISO (image build-base)")
    p.add_argument("--token", required=True, help="a registration token (corral token create)")
    p.add_argument("--out", type=Path, required=True, help="where to write the seeded ISO")
    add_seed_arguments(p)
    p.add_argument(
        "--no-verify-server",
        action="store_true",
        help="do not contact the server to check its CA against the token (offline seeding)",
    )
    p.set_defaults(func=seed_command, local=True)

    p = verbs.add_parser(
        "import-base",
        parents=[common],
        help="upload a base ISO to the server, which then serves seeded copies per token",
    )
    p.add_argument("iso", type=Path, help="the base ISO (image build-base)")
    p.add_argument("--version", default="", help="a version to record (default: its sha256)")
    p.set_defaults(func=import_base_command)


def add_seed_arguments(p: argparse.ArgumentParser) -> None:
    """What goes into a seed besides the token. ``--server`` is the global flag."""
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label the device registers with (repeatable)",
    )
    p.add_argument("--hostname-template", help="e.g. edge-${dmi.product_uuid:8}")
    p.add_argument("--install-disk", metavar="DEV", help="install to this disk at first boot")
    p.add_argument("--ip", metavar="ADDR/PREFIX", help="a static address (default: DHCP)")
    p.add_argument("--gateway", metavar="GW", help="the static default gateway")
    p.add_argument("--dns", action="append", default=[], metavar="ADDR", help="(repeatable)")
    p.add_argument("--interface", metavar="GLOB", help="which interface (default: en* eth*)")


def seed_from_args(args: argparse.Namespace) -> seed_doc.Seed:
    """The seed the flags describe, validated by :mod:`registration.seed`."""
    if not args.server:
        raise CliError("--server is required", hint="the URL devices register with")
    try:
        token = tokens.parse(args.token)
    except RegistrationError as e:
        raise CliError(f"malformed token: {e}", hint="copy it from 'corral token create'") from e
    document: dict[str, Any] = {"server": args.server, "token": str(token)}
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--label {item!r} must be KEY=VALUE")
        labels[key] = value
    if labels:
        document["labels"] = labels
    if args.hostname_template is not None:
        document["hostname_template"] = args.hostname_template
    if args.install_disk is not None:
        document["install_disk"] = args.install_disk
    if args.ip is not None:
        network: dict[str, Any] = {"address": args.ip}
        if args.gateway:
            network["gateway"] = args.gateway
        if args.dns:
            network["dns"] = args.dns
        if args.interface:
            network["interface"] = args.interface
        document["network"] = network
    elif args.gateway or args.dns or args.interface:
        raise CliError("--gateway, --dns and --interface need --ip ADDR/PREFIX")
    try:
        return seed_doc.from_dict(document)
    except seed_doc.SeedError as e:
        raise CliError(f"bad seed: {e}") from e


def seed_command(args: argparse.Namespace) -> int:
    seed = seed_from_args(args)
    try:
        slot = seedslot.render(seed)
        seedslot.find_slot(args.base)
    except seedslot.SeedSlotError as e:
        raise CliError(str(e)) from e
    if not args.no_verify_server:
        try:
            fetch_verified_ca(seed.server, seed.token.ca_fingerprint)
        except AgentError as e:
            raise CliError(
                str(e), hint="check --server, or pass --no-verify-server to seed offline"
            ) from e
    try:
        seedslot.seed_image(args.base, args.out, slot)
    except seedslot.SeedSlotError as e:
        raise CliError(str(e)) from e
    print(f"wrote {args.out} (token {seed.token.token_id}, server {seed.server})")
    return 0


def import_base_command(args: argparse.Namespace, api: OperatorClient) -> None:
    """Check the slot here first (the server checks again), then upload; the version is
    the file's sha256 prefix unless given, so importing the same ISO twice is refused."""
    try:
        seedslot.find_slot(args.iso)
    except seedslot.SeedSlotError as e:
        raise CliError(str(e), hint="build the base ISO with 'corral image build-base'") from e
    sha256 = _sha256(args.iso)
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", args.iso.name).lstrip("._+-")[:128] or "base.iso"
    version = args.version or sha256[:16]
    answer = upload(api, args.iso, BASE_ISO_KIND, name, version, None, sha256)
    output.emit(answer, args.output, COLUMNS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from e
    return digest.hexdigest()
