"""``corral broker mosquitto-config``: configure Mosquitto as the external broker.

Writes ``mosquitto.conf``, the ACL file, the broker's certificate, a CRL of revoked device
certificates and the server replicas' secret share group into ``--out``, and records the
share group and the CRL's path in ``<data-dir>/mqtt.json``, so ``corral serve --mqtt-url``
subscribes with that group and rewrites that CRL whenever a device is revoked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_server import bootstrap, mosquitto
from edge_server.cli.serve import announce_first_start
from edge_server.ops import devices as device_ops
from edge_server.pki import MQTT_IDENTITY, Pki, write_public
from edge_server.settings import load, parse_listen


def mosquitto_config(args: argparse.Namespace) -> int:
    settings = load(data_dir=args.data_dir)
    creds = bootstrap.prepare(settings)  # a fresh data dir gets its CA (and admin) here
    announce_first_start(settings, creds)  # nothing serves yet: no "serving on" line
    pki = Pki(settings.pki_dir)
    host, port = parse_listen(args.listen)
    revoked = device_ops.revoked_serials_at(settings.db_path)
    ca = pki.load_ca()
    files = mosquitto.write_config(
        Path(args.out).absolute(),
        ca,
        host,
        port,
        MQTT_IDENTITY,
        crl_pem=mosquitto.make_crl(ca, revoked),
        names=args.san,
        run_as=args.run_as,
    )
    write_public(
        settings.mqtt_config_path,
        json.dumps({"share_group": files.share_group, "crl": str(files.crl)}).encode(),
    )
    sys.stdout.write(
        f"wrote {files.conf} (and ACL, certificates, CRL with {len(revoked)} serial(s))\n"
        f"run:   mosquitto -c {files.conf}\n"
        f"then:  corral serve --mqtt-url mqtts://{host}:{port}\n"
        f"on a revocation the server SIGHUPs the pid in {files.pid} (CRL reread): run Mosquitto"
        " as a user the server may signal\n"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("broker", help="external MQTT broker configuration")
    verbs = p.add_subparsers(dest="verb", required=True)
    m = verbs.add_parser("mosquitto-config", help="write a Mosquitto config for Corral")
    m.add_argument("--out", required=True, help="directory for mosquitto.conf and friends")
    m.add_argument("--listen", default="0.0.0.0:8883", help="HOST:PORT Mosquitto listens on")
    m.add_argument("--san", action="append", default=[], help="extra name for the broker cert")
    m.add_argument("--run-as", help="user Mosquitto runs as (it must read --out)")
    m.set_defaults(func=mosquitto_config)
