"""What a K3s server node reports: how its cluster's other devices join it.

``POST /api/v1/devices/<id>/k3s`` (mTLS) calls :func:`report_server`. Only the device that
``edge_server.k3s_cluster`` chose as its cluster's server node may report (409 otherwise).
The report (URL, join token, running version) is stored and the cluster's members are
recomputed in the same writer job: the agents' specs gain the URL and token, and the
version the server node now runs. The nudges carry only generations; the token is fetched
with the spec over mTLS HTTPS.
"""

from __future__ import annotations

from sqlite_utils import Database

from edge_server import k3s_cluster, specs
from edge_server.ops.changes import Actor, Changes, Done, Event
from edge_server.store import Store
from edge_server.store.k3s import ServerReport
from edge_server.store.rows import audit
from registration.protocol import K3sServerAck, K3sServerReport


async def report_server(store: Store, device_id: str, body: K3sServerReport) -> Done[K3sServerAck]:
    found = ServerReport(body.server_url, body.token, body.version)
    actor = Actor.device(device_id).name

    def write(db: Database) -> tuple[str, int, list[specs.Change]]:
        group, members = k3s_cluster.report(db, device_id, found)
        # Never the token in the audit log.
        audit(db, actor, "k3s.server", group, server_url=body.server_url, version=body.version)
        return group, len(members) - 1, specs.recompute(db, members)

    group, agents, nudges = await store.write(write)
    return Done(
        K3sServerAck(group=group, agents=agents),
        Changes.of(Event("k3s.server", group, actor), nudges=nudges),
    )
