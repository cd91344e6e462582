"""Mosquitto as Corral's production broker: its config, ACL file, certificates and CRL.

``corral broker mosquitto-config`` calls :func:`write_config`, which writes into one directory:
``mosquitto.conf``, ``acl``, ``ca.pem``, ``broker.pem`` + ``broker-key.pem`` (the broker's TLS
certificate), ``crl.pem``, ``corral-server.pem`` + ``corral-server-key.pem`` (the client
certificate for ``corral serve --mqtt-url``), ``share-group`` (the server replicas' secret
shared-subscription group), a ``persistence/`` directory, and ``mosquitto.pid`` (written by
Mosquitto, so the server can make it reread the CRL: :func:`reload`).

The security scheme is the embedded broker's (``edge_server.broker``): TLS only, a client
certificate signed by the Corral CA is required, and the identity is its CN
(``use_identity_as_username``), and so is the client id (``use_username_as_clientid``).
The ACL gives a device only its own nudge (read) and its own
status and presence (write) through ``%u``; the server identity reads every device's status
and presence and writes every nudge.

What Mosquitto 2.0.11 does, checked by ``tests/edge_server/test_broker.py``:

- **CRL reload: SIGHUP is enough.** A changed ``crl.pem`` alone changes nothing. After
  :func:`write_crl` and a SIGHUP (``systemctl reload mosquitto``, ``kill -HUP``), a revoked
  certificate is refused on its next connection; no restart is needed. SIGHUP does not drop
  connections made before. So on a revocation the server (``sessions.MosquittoSessions``)
  sends the SIGHUP itself (:func:`reload`, through ``mosquitto.pid``; Mosquitto must run as
  a user the server may signal) and then takes the device's session over, which closes its
  connection (persistence keeps retained nudges and queued messages across a clean restart,
  which is also checked).
- **Subscriptions are not checked, deliveries are.** The ACL file never checks a SUBSCRIBE: any
  filter is granted (SUBACK with the requested QoS, never 0x80), ``$share/<group>/...``
  included. Each message is then checked against the
  receiver's ``read`` rules with its real topic (no ``$share`` prefix). So the server's
  ``$share/<group>/corral/v1/devices/+/status`` receives status, and a device that subscribes
  to another device's nudge (or to ``#``) is granted the subscription but sent nothing it may
  not read, retained messages included.
- **So the share group must be secret.** A device that subscribes with the server's group
  and filter joins the group; Mosquitto then hands it its turn of the status messages, the
  read check drops them, and they reach no server replica (a third of them, with two
  replicas). :func:`write_config` therefore makes a random group name, kept in
  ``share-group``; the server's channel must subscribe with it.
- **Wills are checked when they fire, not at CONNECT.** A will on another device's topic is
  accepted with the connection; when the connection dies, the will is checked against the
  client's ``write`` rules like any PUBLISH and dropped. So nothing forged is delivered.
  Tightening either (SUBACK 0x80, a refused CONNECT) would take a plugin: the ACL file has no
  subscribe rules in 2.0, and the dynamic-security plugin, which has them, knows only clients
  listed in its own JSON file, so every device would have to be mirrored there. The embedded
  broker refuses both.
- **Client ids.** ``use_username_as_clientid``: the client id is the certificate's CN
  whatever the client sends, so a certificate can no longer take over another client's
  session and connection (the server's ``corral-server`` included). A second connection with
  the same certificate still takes over the first, as MQTT says. Each server replica
  therefore needs its own certificate and CN, given the server's rights in the ACL
  (``write_config(replicas=...)``).

Also (checked by hand): a CRL with no entries is still written, because with ``crlfile`` set
Mosquitto refuses every client whose issuer has no CRL. The CRL's nextUpdate is the CA's own
expiry: only this broker reads it and it gets a new file on every change, so an earlier date
would only add a way for the whole fleet to be refused. Started as root, Mosquitto switches
to the ``mosquitto`` user, which cannot read this 0700 directory: pass ``run_as`` to
:func:`write_config`, or give the directory to that user.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edge_server import addresses
from edge_server.pki import write_private, write_public
from registration import identity
from registration.desired import TOPIC_ROOT

BROKER_COMMON_NAME = "corral-mqtt-broker"
MAX_INFLIGHT_MESSAGES = 1000
# Per client. The server's one subscriber queues every device's status while it is away.
MAX_QUEUED_MESSAGES = 100_000
PERSISTENT_CLIENT_EXPIRATION = "14d"
AUTOSAVE_SECONDS = 60


@dataclass(frozen=True)
class MosquittoFiles:
    dir: Path
    conf: Path
    acl: Path
    ca: Path
    cert: Path
    key: Path
    crl: Path
    persistence: Path
    server_cert: Path
    server_key: Path
    share_group_file: Path
    pid: Path

    @property
    def share_group(self) -> str:
        """The server replicas' secret shared-subscription group (see the module docstring)."""
        return self.share_group_file.read_text().strip()

    @classmethod
    def under(cls, out_dir: Path, server_identity: str = "corral-server") -> MosquittoFiles:
        return cls(
            dir=out_dir,
            conf=out_dir / "mosquitto.conf",
            acl=out_dir / "acl",
            ca=out_dir / "ca.pem",
            cert=out_dir / "broker.pem",
            key=out_dir / "broker-key.pem",
            crl=out_dir / "crl.pem",
            persistence=out_dir / "persistence",
            server_cert=out_dir / f"{server_identity}.pem",
            server_key=out_dir / f"{server_identity}-key.pem",
            share_group_file=out_dir / "share-group",
            pid=out_dir / "mosquitto.pid",
        )


def make_crl(ca: identity.CertificateAuthority, revoked_serials: Iterable[int]) -> bytes:
    """A PEM CRL signed by the CA that lists these certificate serials."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(max(ca.cert.not_valid_after_utc, now + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(time.time_ns()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=5))
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def write_crl(files: MosquittoFiles, crl_pem: bytes) -> None:
    """Replace the CRL atomically. Mosquitto reads it on SIGHUP (see the module docstring)."""
    write_public(files.crl, crl_pem)


def acl_text(server_identities: Sequence[str]) -> str:
    """Devices through ``%u``; each server identity (one per replica: the client id is the
    CN, so replicas need their own) reads all status and presence and writes all nudges."""
    root = TOPIC_ROOT
    text = (
        "# Written by Corral (edge_server/mosquitto.py); regenerate rather than edit.\n"
        "# %u is the client certificate's CN (use_identity_as_username).\n"
        f"pattern read {root}/%u/nudge\n"
        f"pattern write {root}/%u/status\n"
        f"pattern write {root}/%u/presence\n"
    )
    for server_identity in server_identities:
        text += (
            "\n"
            f"user {server_identity}\n"
            f"topic read {root}/+/status\n"
            f"topic read {root}/+/presence\n"
            f"topic write {root}/+/nudge\n"
        )
    return text


def conf_text(files: MosquittoFiles, listen_host: str, port: int, run_as: str | None) -> str:
    lines = [
        "# Written by Corral (edge_server/mosquitto.py); regenerate rather than edit.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {files.acl}",
        "",
        "persistence true",
        f"persistence_location {files.persistence}/",
        f"autosave_interval {AUTOSAVE_SECONDS}",
        f"pid_file {files.pid}",
        f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "set_tcp_nodelay true",
        "",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if run_as is not None:
        lines.append(f"user {run_as}")
    lines += [
        "",
        f"listener {port} {listen_host}",
        "protocol mqtt",
        f"cafile {files.ca}",
        f"certfile {files.cert}",
        f"keyfile {files.key}",
        f"crlfile {files.crl}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "# The client id is the username, so a certificate cannot borrow another client id",
        "# (and knock that client off): see edge_server/mosquitto.py.",
        "use_username_as_clientid true",
        "# Mosquitto 2.0's ACL file does not check SUBSCRIBE: any filter is granted, and each",
        "# message is then checked against the receiver's read rules. Will topics are not",
        "# checked at CONNECT either; a will is checked against the client's write rules",
        "# when it is published, like any PUBLISH.",
    ]
    return "\n".join(lines) + "\n"


class ReloadError(Exception):
    """Mosquitto could not be told to reread its CRL."""


def reload(files: MosquittoFiles) -> int:
    """SIGHUP the Mosquitto that wrote ``files.pid``: it rereads its CRL (and certificates
    and ACL file). Returns its pid. Blocking (reads files)."""
    try:
        pid = int(files.pid.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError) as e:
        raise ReloadError(f"no running Mosquitto found through {files.pid}: {e}") from e
    if comm != "mosquitto":  # a stale pid file and a reused pid
        raise ReloadError(f"{files.pid} names process {pid} ({comm}), not mosquitto")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise ReloadError(f"cannot signal Mosquitto (pid {pid}): {e}") from e
    return pid


def write_config(
    out_dir: Path,
    ca: identity.CertificateAuthority,
    listen_host: str,
    port: int,
    server_identity: str = "corral-server",
    crl_pem: bytes | None = None,
    *,
    names: Iterable[str] = (),
    run_as: str | None = None,
    replicas: Sequence[str] = (),
) -> MosquittoFiles:
    """Write everything Mosquitto needs to serve Corral's channel on ``listen_host:port``.

    ``names`` are extra DNS names or addresses for the broker's certificate. ``run_as`` sets
    Mosquitto's ``user`` (when started as root it otherwise drops to ``mosquitto``, which must
    then be able to read these files). Without ``crl_pem`` an empty CRL is written.
    ``replicas`` are the CNs of further server replicas, given the server's rights in the ACL.
    """
    files = MosquittoFiles.under(out_dir, server_identity)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.persistence.mkdir(exist_ok=True, mode=0o700)

    write_public(files.ca, identity.cert_to_pem(ca.cert))
    broker_key = identity.generate_key()
    broker_cert = ca.issue_server(
        broker_key, addresses.server_names(listen_host, names), common_name=BROKER_COMMON_NAME
    )
    write_private(files.key, identity.key_to_pem(broker_key))
    write_public(files.cert, identity.cert_to_pem(broker_cert))

    client_key = identity.generate_key()
    client_cert = ca.issue_client(client_key, server_identity)
    write_private(files.server_key, identity.key_to_pem(client_key))
    write_public(files.server_cert, identity.cert_to_pem(client_cert))

    if not files.share_group_file.exists():  # kept, so running replicas stay in one group
        write_private(files.share_group_file, f"corral-{secrets.token_hex(16)}\n".encode())
    write_crl(files, crl_pem if crl_pem is not None else make_crl(ca, []))
    write_public(files.acl, acl_text([server_identity, *replicas]).encode())
    write_public(files.conf, conf_text(files, listen_host, port, run_as).encode())
    return files
