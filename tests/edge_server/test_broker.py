"""The MQTT channel's security on both brokers, with real clients: aiomqtt (paho underneath)
and the mosquitto_sub/mosquitto_pub command lines, all over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_server.broker import EmbeddedBroker
from registration import identity
from registration.desired import TOPIC_ROOT, nudge_topic, presence_topic, status_topic
from tests.mqtt_support import (
    HOST,
    MosquittoProcess,
    client_tls,
    issue_client,
    mosquitto_pub,
    mosquitto_sub,
    mqtt_client,
    revoked_set,
    run_cli,
    serial_of,
    start_embedded,
    start_mosquitto,
)

SERVER = "corral-server"
REPLICA = "corral-server-2"  # a second server replica has its own CN (and so client id)
A, B = "dev-aaaaaaaaaaaa", "dev-bbbbbbbbbbbb"
QUIET = 0.5  # how long "nothing else arrives" is watched, after a later message did arrive


@dataclass(frozen=True)
class Cert:
    cn: str
    cert: Path
    key: Path
    tls: ssl.SSLContext

    @property
    def serial(self) -> int:
        return serial_of(self.cert)


@dataclass
class Harness:
    """One running broker of either kind, the CA, and ways to act on both the same way."""

    kind: str
    port: int
    ca: identity.CertificateAuthority
    ca_path: Path
    certs: dict[str, Cert]
    revoked: set[int] = field(default_factory=set)
    embedded: EmbeddedBroker | None = None
    mosquitto: MosquittoProcess | None = None

    def client(
        self,
        cert: Cert | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: aiomqtt.Will | None = None,
        v5: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> aiomqtt.Client:
        context = tls or (cert.tls if cert else client_tls(self.ca_path))
        identifier = client_id or (cert.cn if cert else "anonymous")
        if v5:
            return mqtt_client(
                HOST,
                self.port,
                identifier=identifier,
                tls_context=context,
                protocol=aiomqtt.ProtocolVersion.V5,
                timeout=5,
            )
        return mqtt_client(
            HOST,
            self.port,
            identifier=identifier,
            tls_context=context,
            clean_session=clean_session,
            will=will,
            timeout=5,
        )

    def sub(
        self,
        cert: Cert | None,
        topics: list[str],
        *,
        client_id: str | None = None,
        count: int | None = None,
        wait: float = 2,
    ) -> list[str]:
        """mosquitto_sub with this certificate (client id: its CN unless given)."""
        who = client_id or (cert.cn if cert else None)
        return mosquitto_sub(*self._cli(cert), topics, client_id=who, count=count, wait=wait)

    def pub(
        self, cert: Cert | None, topic: str, message: str, *, client_id: str | None = None
    ) -> list[str]:
        """mosquitto_pub with this certificate (client id: its CN unless given)."""
        who = client_id or (cert.cn if cert else None)
        return mosquitto_pub(*self._cli(cert), topic, message, client_id=who)

    def _cli(self, cert: Cert | None) -> tuple[int, Path, Path | None, Path | None]:
        """Where mosquitto_sub/pub connect and with which certificate."""
        return self.port, self.ca_path, cert.cert if cert else None, cert.key if cert else None

    async def revoke(self, cert: Cert) -> None:
        """Embedded: is_revoked now says yes. Mosquitto: a new CRL, SIGHUP, and wait until
        Mosquitto has reread it (a new connection with the certificate is refused)."""
        if self.mosquitto is None:
            self.revoked.add(cert.serial)
            return
        await asyncio.to_thread(self.mosquitto.revoke, cert.serial)
        await asyncio.to_thread(self.mosquitto.hup)
        assert await fails_soon(self.pub(cert, status_topic(cert.cn), "p", client_id="probe"))


async def fails_soon(argv: list[str], attempts: int = 50) -> bool:
    """Whether the command fails within ``attempts`` tries, 0.1 s apart."""
    for _ in range(attempts):
        if (await run_cli(argv)).returncode != 0:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
def ca() -> identity.CertificateAuthority:
    return identity.CertificateAuthority.create()


@pytest.fixture
def certs(ca: identity.CertificateAuthority, tmp_path: Path) -> dict[str, Cert]:
    """Certificates for the server identity, two devices, and a device of another CA."""
    out: dict[str, Cert] = {}
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(identity.cert_to_pem(ca.cert))
    for name, cn, issuer in [
        (SERVER, SERVER, ca),
        (REPLICA, REPLICA, ca),
        (A, A, ca),
        (B, B, ca),
        ("stranger", A, identity.CertificateAuthority.create("Not Corral")),
    ]:
        cert, key = issue_client(issuer, cn, tmp_path / "clients" / name)
        out[name] = Cert(cn, cert, key, client_tls(ca_path, cert, key))
    return out


@contextlib.asynccontextmanager
async def running(
    kind: str, tmp_path: Path, ca: identity.CertificateAuthority, certs: dict[str, Cert]
) -> AsyncIterator[Harness]:
    revoked: set[int] = set()
    if kind == "embedded":
        broker = await start_embedded(ca, tmp_path / "embedded", revoked_set(revoked))
        try:
            yield Harness(kind, broker.port, ca, broker.ca_path, certs, revoked, embedded=broker)
        finally:
            await broker.stop()
        return
    mosquitto = await asyncio.to_thread(start_mosquitto, tmp_path, ca, replicas=(REPLICA,))
    try:
        yield Harness(kind, mosquitto.port, ca, mosquitto.files.ca, certs, mosquitto=mosquitto)
    finally:
        await asyncio.to_thread(mosquitto.stop)


@pytest.fixture(params=["embedded", "mosquitto"])
async def broker(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    ca: identity.CertificateAuthority,
    certs: dict[str, Cert],
) -> AsyncIterator[Harness]:
    async with running(request.param, tmp_path, ca, certs) as harness:
        yield harness


def one_broker(kind: str) -> Any:
    """A fixture named ``kind``: that broker alone, for tests of what only it does."""

    @pytest.fixture(name=kind)
    async def fixture(
        tmp_path: Path, ca: identity.CertificateAuthority, certs: dict[str, Cert]
    ) -> AsyncIterator[Harness]:
        async with running(kind, tmp_path, ca, certs) as harness:
            yield harness

    return fixture


embedded = one_broker("embedded")
mosquitto = one_broker("mosquitto")


async def receive(client: aiomqtt.Client, topic: str, seconds: float = 5) -> aiomqtt.Message:
    """The next message on ``topic``; others seen on the way are ignored."""
    async with asyncio.timeout(seconds):
        async for message in client.messages:
            if message.topic.value == topic:
                return message
    raise AssertionError("the client disconnected")


async def drain(client: aiomqtt.Client, seconds: float = QUIET) -> list[tuple[str, bytes]]:
    """Everything that arrives within ``seconds``."""
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append((message.topic.value, message.payload))
    return got


async def until(
    client: aiomqtt.Client, topics: set[str], seconds: float = 5
) -> list[tuple[str, bytes]]:
    """Messages until every topic in ``topics`` has arrived, then QUIET more seconds."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(seconds):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append((message.topic.value, message.payload))
            if topics <= {t for t, _ in got}:
                break
    return got + await drain(client)


def refused(codes: object) -> bool:
    assert isinstance(codes, list | tuple)
    return all(getattr(code, "is_failure", False) or code == 0x80 for code in codes)


# --- both brokers --------------------------------------------------------------------------


async def test_device_receives_its_retained_qos1_nudge_from_the_server(broker: Harness) -> None:
    c = broker.certs
    async with broker.client(c[SERVER]) as server:
        await server.publish(nudge_topic(A), b'{"generation": 7}', qos=1, retain=True)

    async with broker.client(c[A]) as device:
        assert not refused(await device.subscribe(nudge_topic(A), qos=1))
        message = await receive(device, nudge_topic(A))
    assert message.payload == b'{"generation": 7}'
    assert message.retain and message.qos == 1

    cli = await run_cli(broker.sub(c[A], [nudge_topic(A)], count=1, wait=5))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f'{nudge_topic(A)} {{"generation": 7}}'


async def test_device_never_receives_another_devices_nudge(broker: Harness) -> None:
    c = broker.certs
    async with broker.client(c[SERVER]) as server, broker.client(c[B]) as device_b:
        await server.publish(nudge_topic(A), b"for-a", qos=1, retain=True)
        await server.publish(nudge_topic(B), b"for-b", qos=1, retain=True)
        # B holds a subscription to its nudge when A connects.
        await device_b.subscribe(nudge_topic(B), qos=1)
        assert await receive(device_b, nudge_topic(B)) is not None

        async with broker.client(c[A]) as device_a:
            codes_b = await device_a.subscribe(nudge_topic(B), qos=1)
            codes_all = await device_a.subscribe("#", qos=1)
            if broker.kind == "embedded":  # refused; Mosquitto grants and filters delivery
                assert refused(codes_b) and refused(codes_all)
            await device_a.subscribe(nudge_topic(A), qos=1)
            await server.publish(nudge_topic(B), b"live-for-b", qos=1)
            await server.publish(nudge_topic(A), b"live-for-a", qos=1)
            got = await until(device_a, {nudge_topic(A)})
        assert all(topic == nudge_topic(A) for topic, _ in got), got
        assert b"live-for-a" in [payload for _, payload in got]
        assert (await receive(device_b, nudge_topic(B))).payload == b"live-for-b"

    cli = await run_cli(broker.sub(c[A], [nudge_topic(B), "#", f"{TOPIC_ROOT}/+/nudge"], wait=2))
    assert "for-b" not in cli.stdout
    if broker.kind == "mosquitto":  # once per matching subscription
        assert set(cli.stdout.splitlines()) == {f"{nudge_topic(A)} for-a"}
    else:
        assert broker.embedded and broker.embedded.stats.denials["subscribe"] >= 5


async def test_device_can_publish_only_its_own_status_and_presence(broker: Harness) -> None:
    c = broker.certs
    async with broker.client(c[SERVER]) as server, broker.client(c[A]) as device:
        await server.subscribe(f"{TOPIC_ROOT}/+/status", qos=1)
        await server.subscribe(f"{TOPIC_ROOT}/+/presence", qos=1)
        await device.publish(status_topic(B), b"forged", qos=1)
        await device.publish(presence_topic(B), b"forged", qos=1)
        await device.publish(nudge_topic(B), b"forged", qos=1)
        await device.publish(status_topic(A), b"own", qos=1)
        await device.publish(presence_topic(A), b"own", qos=1)
        got = await until(server, {status_topic(A), presence_topic(A)})
        assert sorted(got) == [(presence_topic(A), b"own"), (status_topic(A), b"own")]

        forged = await run_cli(broker.pub(c[A], status_topic(B), "forged-cli"))
        own = await run_cli(broker.pub(c[A], status_topic(A), "own-cli"))
        assert own.returncode == 0, own.stderr
        got = await until(server, {status_topic(A)})
        assert got == [(status_topic(A), b"own-cli")]
        # MQTT 3.1.1 cannot refuse a publish: both brokers acknowledge it and drop it.
        assert forged.returncode == 0, forged.stderr

    if broker.embedded:
        assert broker.embedded.stats.denials["publish"] == 4


@pytest.mark.parametrize("problem", ["no certificate", "another CA", "revoked"])
async def test_clients_without_a_valid_certificate_are_refused(
    broker: Harness, problem: str
) -> None:
    c = broker.certs
    cert: Cert | None = None
    if problem == "another CA":
        cert = c["stranger"]
    elif problem == "revoked":
        cert = c[A]
        async with broker.client(cert):
            pass  # accepted until it is revoked
        await broker.revoke(cert)

    with pytest.raises(aiomqtt.MqttError):
        async with broker.client(cert, client_id=A):
            pass
    cli = await run_cli(broker.pub(cert, status_topic(A), "x", client_id=A))
    assert cli.returncode != 0
    cli = await run_cli(broker.sub(cert, [nudge_topic(A)], client_id=A, wait=1))
    assert cli.returncode != 0

    if broker.embedded:
        reason = "revoked" if problem == "revoked" else "tls"
        assert broker.embedded.stats.refusals[reason] == 3
        assert broker.embedded.stats.connections_refused == 3


async def test_a_last_will_goes_only_to_the_devices_own_presence(broker: Harness) -> None:
    c = broker.certs

    async def die_with_will(topic: str, payload: str) -> None:
        argv = broker.sub(c[A], [nudge_topic(A)], wait=30)
        argv += ["--will-topic", topic, "--will-payload", payload, "--will-qos", "1"]
        proc = await asyncio.create_subprocess_exec(*argv)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):  # a refused client exits by itself
                await proc.wait()
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            await proc.wait()

    async with broker.client(c[SERVER]) as server:
        await server.subscribe(f"{TOPIC_ROOT}/+/presence", qos=1)
        await die_with_will(presence_topic(B), "forged-will")
        await die_with_will(presence_topic(A), "own-will")
        got = await until(server, {presence_topic(A)})
    assert got == [(presence_topic(A), b"own-will")]
    if broker.embedded:
        assert broker.embedded.stats.refusals["will_topic_denied"] == 1


async def test_persistent_session_keeps_qos1_nudges_for_a_device_that_is_away(
    broker: Harness,
) -> None:
    c = broker.certs
    async with broker.client(c[A], clean_session=False) as device:
        await device.subscribe(nudge_topic(A), qos=1)
    async with broker.client(c[SERVER]) as server:
        await server.publish(nudge_topic(A), b"while-away", qos=1)
    async with broker.client(c[A], clean_session=False) as device:
        message = await receive(device, nudge_topic(A))
    assert message.payload == b"while-away"


# --- the embedded broker ---------------------------------------------------------------------


async def test_embedded_refuses_a_client_id_that_is_not_the_certificates_cn(
    embedded: Harness,
) -> None:
    """Refused before amqtt sees the CONNECT, which would otherwise already have deleted or
    taken over the session of that client id."""
    c = embedded.certs
    async with embedded.client(c[B], clean_session=False) as device_b:
        await device_b.subscribe(nudge_topic(B), qos=1)
        for clean in (True, False):
            with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                async with embedded.client(c[A], client_id=B, clean_session=clean):
                    pass
        cli = await run_cli(embedded.pub(c[A], status_topic(A), "x", client_id=B))
        assert cli.returncode != 0
        # B kept its connection and its subscription.
        async with embedded.client(c[SERVER]) as server:
            await server.publish(nudge_topic(B), b"still-here", qos=1)
        assert (await receive(device_b, nudge_topic(B))).payload == b"still-here"
    assert embedded.embedded and embedded.embedded.stats.refusals == {"client_id_mismatch": 3}


async def test_embedded_fails_closed_when_the_revocation_check_fails(
    tmp_path: Path, ca: identity.CertificateAuthority, certs: dict[str, Cert]
) -> None:
    async def unreachable_deny_list(serial: int, cn: str) -> bool:
        raise ConnectionError("deny-list store is down")

    broker = await start_embedded(ca, tmp_path / "embedded", unreachable_deny_list)
    try:
        harness = Harness("embedded", broker.port, ca, broker.ca_path, certs, embedded=broker)
        with pytest.raises(aiomqtt.MqttCodeError, match="unavailable"):
            async with harness.client(certs[A]):
                pass
        assert broker.stats.refusals == {"revocation_check_failed": 1}
    finally:
        await broker.stop()


async def test_embedded_server_subscribes_plainly_not_shared(embedded: Harness) -> None:
    c = embedded.certs
    async with embedded.client(c[SERVER]) as server, embedded.client(c[A]) as device:
        assert refused(await server.subscribe(f"$share/corral/{TOPIC_ROOT}/+/status", qos=1))
        assert not refused(await server.subscribe(f"{TOPIC_ROOT}/+/status", qos=1))
        await device.publish(status_topic(A), b"up", qos=1)
        assert (await receive(server, status_topic(A))).payload == b"up"


async def test_embedded_broker_can_be_restarted_and_loses_its_state(embedded: Harness) -> None:
    c, broker = embedded.certs, embedded.embedded
    assert broker is not None
    async with embedded.client(c[SERVER]) as server:
        await server.publish(nudge_topic(A), b"before", qos=1, retain=True)
    await broker.stop()
    await broker.start()
    assert broker.port == embedded.port
    async with embedded.client(c[A]) as device:
        await device.subscribe(nudge_topic(A), qos=1)
        assert await drain(device) == []


# --- Mosquitto -------------------------------------------------------------------------------


async def share_status(
    mosquitto: Harness, group: str, intruder_filters: list[str]
) -> tuple[list[int], list[int], list[tuple[str, bytes]]]:
    """Two server replicas share ``group``; B subscribes to ``intruder_filters``; A publishes
    20 status messages. What each replica and B received."""
    c = mosquitto.certs
    shared = f"$share/{group}/{TOPIC_ROOT}/+/status"
    async with (
        mosquitto.client(c[SERVER], v5=True) as replica1,
        mosquitto.client(c[REPLICA], v5=True) as replica2,
        mosquitto.client(c[B], v5=True) as device_b,
        mosquitto.client(c[A]) as device_a,
    ):
        assert not refused(await replica1.subscribe(shared, qos=1))
        assert not refused(await replica2.subscribe(shared, qos=1))
        for topic_filter in intruder_filters:
            await device_b.subscribe(topic_filter, qos=1)
        for n in range(20):
            await device_a.publish(status_topic(A), str(n).encode(), qos=1)
        got1, got2, got_b = await asyncio.gather(
            drain(replica1, 2), drain(replica2, 2), drain(device_b, 2)
        )
    return [int(p) for _, p in got1], [int(p) for _, p in got2], got_b


async def test_mosquitto_server_replicas_share_status_in_a_secret_group(
    mosquitto: Harness,
) -> None:
    assert mosquitto.mosquitto is not None
    files = mosquitto.mosquitto.files
    group = await asyncio.to_thread(lambda: files.share_group)
    guesses = [f"$share/{g}/{TOPIC_ROOT}/+/status" for g in ("corral", "x")]
    got1, got2, got_b = await share_status(mosquitto, group, [*guesses, f"{TOPIC_ROOT}/+/status"])
    assert sorted(got1 + got2) == list(range(20))  # each message exactly once
    assert got1 and got2
    assert got_b == []  # a device's $share or wildcard does not widen what it may read


async def test_mosquitto_a_device_that_knows_the_share_group_swallows_status(
    mosquitto: Harness,
) -> None:
    """Why the group is secret: Mosquitto 2.0.11 grants any SUBSCRIBE, so a device can join
    the group; its turn of the messages is then dropped by the read check."""
    group = "corral"
    got1, got2, got_b = await share_status(
        mosquitto, group, [f"$share/{group}/{TOPIC_ROOT}/+/status"]
    )
    assert got_b == []
    assert len(got1 + got2) < 20


async def test_mosquitto_rereads_the_crl_on_sighup_and_keeps_connected_clients(
    mosquitto: Harness,
) -> None:
    """A's connection is held; B's certificate probes the CRL (a probe with A's certificate
    would take A's client id over, and so A's connection)."""
    c, process = mosquitto.certs, mosquitto.mosquitto
    assert process is not None
    async with mosquitto.client(c[A]) as held:
        await held.subscribe(nudge_topic(A), qos=1)
        await check_sighup(mosquitto, held)
        await asyncio.to_thread(process.restart)  # a restart does
        with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
            await drain(held, 5)
    with pytest.raises(aiomqtt.MqttError):
        async with mosquitto.client(c[A]):
            pass


async def check_sighup(mosquitto: Harness, held: aiomqtt.Client) -> None:
    c, process = mosquitto.certs, mosquitto.mosquitto
    assert process is not None
    async with mosquitto.client(c[SERVER]) as server:
        await asyncio.to_thread(process.revoke, c[A].serial, c[B].serial)
        # A changed CRL file alone changes nothing.
        assert (await run_cli(mosquitto.pub(c[B], status_topic(B), "x"))).returncode == 0

        await asyncio.to_thread(process.hup)
        assert await fails_soon(mosquitto.pub(c[B], status_topic(B), "x"))
        with pytest.raises(aiomqtt.MqttError):
            async with mosquitto.client(c[B]):
                pass
        # SIGHUP does not drop a connection made before the revocation.
        await server.publish(nudge_topic(A), b"after-hup", qos=1)
        assert (await receive(held, nudge_topic(A))).payload == b"after-hup"


async def test_mosquitto_a_certificate_cannot_borrow_another_client_id(mosquitto: Harness) -> None:
    """The client id is the certificate's CN (``use_username_as_clientid``): A's certificate
    asking for B's client id (or the server's) gets its own, knocks nobody off and gains
    nothing. Before, it took over B's connection and session."""
    c = mosquitto.certs
    async with mosquitto.client(c[SERVER]) as server, mosquitto.client(c[B]) as device_b:
        await device_b.subscribe(nudge_topic(B), qos=1)
        await server.publish(nudge_topic(B), b"for-b", qos=1, retain=True)
        assert (await receive(device_b, nudge_topic(B))).payload == b"for-b"
        await server.subscribe(f"{TOPIC_ROOT}/+/status", qos=1)
        for borrowed in (B, SERVER):
            async with mosquitto.client(c[A], client_id=borrowed) as impostor:
                await impostor.subscribe(nudge_topic(B), qos=1)
                await impostor.publish(status_topic(B), b"forged", qos=1)
                await impostor.publish(status_topic(A), b"own", qos=1)
                assert await until(server, {status_topic(A)}) == [(status_topic(A), b"own")]
                assert await drain(impostor) == []
        cli = await run_cli(mosquitto.sub(c[A], [nudge_topic(B)], client_id=B, wait=1))
        assert "for-b" not in cli.stdout
        # B and the server were never knocked off: both still work.
        await server.publish(nudge_topic(B), b"still-b", qos=1)
        assert (await receive(device_b, nudge_topic(B))).payload == b"still-b"


async def test_mosquitto_keeps_retained_nudges_and_queued_messages_across_a_restart(
    mosquitto: Harness,
) -> None:
    c, process = mosquitto.certs, mosquitto.mosquitto
    assert process is not None
    async with mosquitto.client(c[A], clean_session=False) as device:
        await device.subscribe(nudge_topic(A), qos=1)
    async with mosquitto.client(c[SERVER]) as server:
        await server.publish(nudge_topic(B), b"retained-for-b", qos=1, retain=True)
        await server.publish(nudge_topic(A), b"queued-for-a", qos=1)
    await asyncio.to_thread(process.restart)

    async with mosquitto.client(c[A], clean_session=False) as device:
        assert (await receive(device, nudge_topic(A))).payload == b"queued-for-a"
    cli = await run_cli(mosquitto.sub(c[B], [nudge_topic(B)], count=1, wait=5))
    assert cli.stdout.strip() == f"{nudge_topic(B)} retained-for-b"
