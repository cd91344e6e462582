"""``corral-agent``: the device's command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from node_image.agent import register as register_mod
from node_image.agent import seed as seed_mod
from node_image.agent.state import StateDir
from node_image.errors import AgentError

DEFAULT_STATE_DIR = "/var/lib/corral-agent"


def cmd_register(args: argparse.Namespace) -> int:
    seed = seed_mod.load(Path(args.seed))
    result = register_mod.register(seed, StateDir(Path(args.state_dir)))
    sys.stdout.write(
        json.dumps(
            {
                "device_id": result.device_id,
                "name": result.name,
                "created": result.created,
                "refreshed": result.refreshed,
            }
        )
        + "\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral-agent", description="Corral device agent")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register this device with a seed file")
    reg.add_argument("--seed", required=True, help="seed JSON: server URL and token")
    reg.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    reg.set_defaults(func=cmd_register)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (AgentError, OSError) as e:
        if args.debug:
            raise
        sys.stderr.write(f"corral-agent: error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
