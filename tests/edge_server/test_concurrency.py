"""Token expiry, revocation and use counting under 50 concurrent registrations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.support import Machine, Server, tls_connector


async def register_all(
    server: Server, bodies: list[dict[str, Any]], during: Any = None
) -> list[tuple[int, dict[str, Any]]]:
    """Send every body at once, each on its own connection, as separate devices would."""
    connector = tls_connector(server, limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.post(f"{server.url}/api/v1/register", json=body) as r:
                return r.status, await r.json()

        tasks = [asyncio.create_task(one(b)) for b in bodies]
        if during is not None:
            await during()
        return await asyncio.gather(*tasks)


async def api(server: Server, method: str, path: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    connector = tls_connector(server)
    async with (
        aiohttp.ClientSession(connector=connector, headers=headers) as session,
        session.request(method, server.url + path) as r,
    ):
        data: dict[str, Any] = await r.json()
        return data


async def test_fifty_concurrent_against_ten_uses_create_exactly_ten(
    lenient_server: Server,
) -> None:
    token = lenient_server.create_token(max_uses=10)
    bodies = [Machine().request(token["token"]) for _ in range(50)]
    results = await register_all(lenient_server, bodies)
    statuses = sorted(s for s, _ in results)
    assert statuses == [201] * 10 + [409] * 40
    assert {b["error"] for s, b in results if s == 409} == {"token_exhausted"}
    assert len({b["device_id"] for s, b in results if s == 201}) == 10
    assert (await api(lenient_server, "GET", "/api/v1/devices"))["total"] == 10
    assert (await api(lenient_server, "GET", f"/api/v1/tokens/{token['id']}"))["uses"] == 10


async def test_same_machine_fifty_times_at_once_is_one_device(lenient_server: Server) -> None:
    token = lenient_server.create_token(max_uses=1)
    machine = Machine()
    results = await register_all(lenient_server, [machine.request(token["token"])] * 50)
    assert sorted(s for s, _ in results) == [200] * 49 + [201]
    assert len({b["device_id"] for _, b in results}) == 1
    assert (await api(lenient_server, "GET", "/api/v1/devices"))["total"] == 1
    assert (await api(lenient_server, "GET", f"/api/v1/tokens/{token['id']}"))["uses"] == 1


async def test_revocation_during_fifty_concurrent_registrations(lenient_server: Server) -> None:
    token = lenient_server.create_token(max_uses=None)
    bodies = [Machine().request(token["token"]) for _ in range(50)]

    async def revoke() -> None:
        await asyncio.sleep(0.05)
        await api(lenient_server, "DELETE", f"/api/v1/tokens/{token['id']}")

    results = await register_all(lenient_server, bodies, during=revoke)
    created = [b for s, b in results if s == 201]
    refused = [b for s, b in results if s != 201]
    assert all(b["error"] == "revoked_token" for b in refused)
    assert len(created) + len(refused) == 50
    assert (await api(lenient_server, "GET", "/api/v1/devices"))["total"] == len(created)
    assert (await api(lenient_server, "GET", f"/api/v1/tokens/{token['id']}"))["uses"] == len(
        created
    )
    # Once revoked, nobody gets in.
    late = await register_all(
        lenient_server, [Machine().request(token["token"]) for _ in range(50)]
    )
    assert {s for s, _ in late} == {401}


async def test_expiry_during_fifty_concurrent_registrations(lenient_server: Server) -> None:
    token = lenient_server.create_token(max_uses=None, ttl_seconds=2)
    expires_at = time.time() + 2
    created: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    while time.time() < expires_at + 1:
        bodies = [Machine().request(token["token"]) for _ in range(50)]
        for status, body in await register_all(lenient_server, bodies):
            (created if status == 201 else refused).append(body)
    assert created, "some registrations landed before expiry"
    assert refused, "registrations after expiry were refused"
    assert {b["error"] for b in refused} == {"expired_token"}
    assert (await api(lenient_server, "GET", "/api/v1/devices"))["total"] == len(created)
    assert (await api(lenient_server, "GET", f"/api/v1/tokens/{token['id']}"))["uses"] == len(
        created
    )
