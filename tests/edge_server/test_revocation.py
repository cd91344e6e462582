"""The CRL that an external broker reads stays whole and current under concurrent revocations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from tests.conftest import _supervise, make_server
from tests.edge_server.test_concurrency import register_all
from tests.support import Machine, Server, tls_connector

DEVICES = 60


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path, broker="mosquitto", CORRAL_REGISTER_FAILURES_PER_MINUTE="100000")
    yield from _supervise(srv)


def crl_serials(path: Path) -> set[int]:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return {entry.serial_number for entry in crl}


async def test_concurrent_deletes_all_succeed_and_the_crl_lists_every_serial(
    mosquitto_server: Server,
) -> None:
    server = mosquitto_server
    token = server.create_token(max_uses=None)
    results = await register_all(
        server, [Machine().request(token["token"]) for _ in range(DEVICES)]
    )
    assert {s for s, _ in results} == {201}
    serials = {int(b["serial"]) for _, b in results}
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    connector = tls_connector(server, limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def revoke(i: int, device_id: str) -> int:
            verb, path = ("DELETE", "") if i % 2 else ("POST", "/reset")
            async with session.request(
                verb, f"{server.url}/api/v1/devices/{device_id}{path}"
            ) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(
            *(revoke(i, b["device_id"]) for i, (_, b) in enumerate(results))
        )
    assert statuses == [200] * DEVICES
    crl = server.mosquitto.files.crl
    assert crl_serials(crl) == serials
    assert not [p.name for p in crl.parent.iterdir() if ".tmp" in p.name]
