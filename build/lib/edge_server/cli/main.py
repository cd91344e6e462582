"""Entry point of ``corral``. Errors print one line (and a hint) and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from edge_server.cli import (
    api_tokens,
    artifacts,
    broker,
    demo,
    devices,
    groups,
    image,
    serve,
    tokens,
)
from edge_server.cli.client import OperatorClient
from edge_server.errors import ServerError
from registration.errors import RegistrationError


class Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (hint: {self.prog} --help)\n")
        sys.exit(2)


OUTPUTS = ["table", "json"]


def add_global_flags(parser: argparse.ArgumentParser, *, root: bool) -> None:
    """The flags every command takes, before or after its noun and verb.

    The root parser holds the defaults; the subcommands' copies default to SUPPRESS, so a
    flag given after the subcommand wins and one left out keeps the root's value.
    """

    def default(value: object) -> object:
        return value if root else argparse.SUPPRESS

    parser.add_argument(
        "--server",
        default=default(None),
        help="server URL (default: the local server in --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        default=default(None),
        help="data directory (default ./corral-data or $CORRAL_DATA_DIR)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks"
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False))


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``: nouns, then their verbs."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += [child, *_subcommands(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    # -o for the commands that print API objects: after the verb, or before the noun.
    common = Parser(add_help=False)
    common.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS)
    parser = Parser(prog="corral", description="Corral edge fleet manager")
    add_global_flags(parser, root=True)
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="table or json")
    sub = parser.add_subparsers(dest="noun", required=True)
    serve.add_parser(sub)
    demo.add_parser(sub)
    broker.add_parser(sub)
    tokens.add_parser(sub, common)
    devices.add_parser(sub, common)
    groups.add_parser(sub, common)
    api_tokens.add_parser(sub, common)
    artifacts.add_parser(sub, common)
    image.add_parser(sub, common)
    for child in _subcommands(parser):
        add_global_flags(child, root=False)
    return parser


def die(message: str, hint: str | None = None) -> int:
    line = f"corral: error: {message}"
    if hint:
        line += f" (hint: {hint})"
    sys.stderr.write(line.replace("\n", " ") + "\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.debug
        else logging.INFO
        if args.verbose or args.noun in ("serve", "demo")
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # Local commands (no server to talk to) set ``local=True`` in their defaults.
        if args.noun in ("serve", "demo", "broker") or getattr(args, "local", False):
            return int(args.func(args))
        api = OperatorClient.from_args(args.server, args.data_dir)
        args.func(args, api)
        return 0
    except BrokenPipeError:
        # `corral device list | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ServerError, RegistrationError, OSError, ValueError) as e:
        if args.debug:
            raise
        return die(str(e), getattr(e, "hint", None))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
