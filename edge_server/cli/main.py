"""Entry point of ``corral``. Errors print one line (and a hint) and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from edge_server.cli import api_tokens, broker, demo, devices, groups, serve, tokens
from edge_server.cli.client import ApiClient
from edge_server.errors import ServerError
from registration.errors import RegistrationError


class Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (hint: {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("-o", "--output", choices=["table", "json"], default="table")
    common.add_argument(
        "--server", default=argparse.SUPPRESS, help="server URL (default: the local server)"
    )
    parser = Parser(prog="corral", description="Corral edge fleet manager")
    parser.add_argument("--server", help="server URL (default: the local server in --data-dir)")
    parser.add_argument(
        "--data-dir", help="data directory (default ./corral-data or $CORRAL_DATA_DIR)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="noun", required=True)
    serve.add_parser(sub)
    demo.add_parser(sub)
    broker.add_parser(sub)
    tokens.add_parser(sub, common)
    devices.add_parser(sub, common)
    groups.add_parser(sub, common)
    api_tokens.add_parser(sub, common)
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
        if args.noun in ("serve", "demo", "broker"):
            return int(args.func(args))
        api = ApiClient.from_args(args.server, args.data_dir)
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
