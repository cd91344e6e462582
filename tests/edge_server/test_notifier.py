"""Operations through the notifier: live subscribers see every committed change, in order,
and nothing of a change that failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from edge_server import bootstrap
from edge_server.errors import Conflict
from edge_server.keys import CA, SESSIONS, SETTINGS, STORE
from edge_server.notifier import Notifier
from edge_server.ops import Actor
from edge_server.ops import devices as device_ops
from edge_server.ops import groups as group_ops
from edge_server.ops import registration as registration_ops
from edge_server.ops import tokens as token_ops
from edge_server.ops.groups import GroupCreate
from edge_server.pki import Pki
from edge_server.sessions import NoSessionControl
from edge_server.settings import load
from edge_server.store import Store
from registration.protocol import RegisterRequest, TokenCreate
from tests.support import Machine

ALICE = Actor("alice")


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    """What the notifier needs of the server's state, on a fresh data dir (no external
    broker, so no CRL; no MQTT channel, so nudges wait for its first connect)."""
    settings = load(data_dir=str(tmp_path / "data"))
    bootstrap.prepare(settings)
    app = web.Application()
    app[SETTINGS] = settings
    app[CA] = Pki(settings.pki_dir).load_ca()
    return app


async def test_subscribers_see_each_committed_change_in_order(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[SESSIONS] = NoSessionControl()
    store = Store(settings.db_path)
    await store.start()
    app[STORE] = store
    notifier = Notifier(app)
    try:
        with notifier.subscribe() as events:
            group = GroupCreate(name="eu", selector="site=eu")
            await notifier.run(group_ops.create(store, ALICE, group))
            with pytest.raises(Conflict):  # rolled back: no event
                await notifier.run(group_ops.create(store, ALICE, group))
            token = await notifier.run(
                token_ops.create(
                    store, ALICE, TokenCreate(labels={"site": "eu"}), app[CA].fingerprint
                )
            )
            answer = await notifier.run(
                registration_ops.register(
                    store,
                    app[CA],
                    RegisterRequest.model_validate(Machine().request(token.token)),
                    api_url="https://corral.test",
                )
            )
            shown = await device_ops.show(store, answer.device_id)
            assert shown.groups == ["eu"] and shown.desired.generation == 1
            await notifier.run(device_ops.delete(store, ALICE, answer.device_id))
            seen = [await events.get() for _ in range(4)]
        assert [(e.kind, e.target, e.actor) for e in seen] == [
            ("group.create", "eu", "alice"),
            ("token.create", token.id, "alice"),
            ("device.register", answer.device_id, f"token:{token.id}"),
            ("device.delete", answer.device_id, "alice"),
        ]
        assert events.lost == 0
        assert not notifier._subscribers  # closed on leaving the block
    finally:
        await store.close()
