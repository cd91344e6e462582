"""K3s cluster formation: one cluster per group that enables K3s, and who joins whom.

A device belongs to the cluster of its highest-precedence group whose spec sets a K3s
version. In each cluster one device is the **server node**:

1. the lowest device id carrying the label ``corral.dev/k3s-role=server``, else
2. the server chosen before, while it is still a member (a device that registers later
   never takes over a running cluster), else
3. the lowest device id among the members.

The server node's spec says ``role: server`` and carries no join token. Once it has installed
K3s it reports its join URL, token and running version over mTLS HTTPS (``ops.k3s``); from
then on the specs of the cluster's **other** devices say ``role: agent`` with that URL and
token, and the version the server node runs. So an upgrade goes server first: the agents
keep the old version until the server node reports the new one. Before that report an agent's
spec has no URL or token, and its reconciler waits. The token travels in specs only (mTLS
HTTPS); nudges carry only the generation.

:class:`Clusters` runs inside ``specs.recompute`` (a writer job): :meth:`Clusters.load`
brings the memberships of the devices being recomputed up to date, re-chooses the server of
every cluster that changed, and widens the recomputation to a cluster's every member when its
server changed; :meth:`Clusters.place` then fills each spec's ``k3s`` role, URL and token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from edge_server.errors import Conflict
from edge_server.store import k3s as k3s_store
from edge_server.store import state as state_store
from edge_server.store.k3s import Member, ServerReport
from registration.desired import Spec
from registration.protocol import K3S_ROLE_LABEL

if TYPE_CHECKING:
    from edge_server.specs import Layer

log = logging.getLogger(__name__)


class NotServer(Conflict):
    code = "not_k3s_server"


def cluster_of(layers: Sequence[Layer], labels: dict[str, str]) -> Member | None:
    """The device's cluster: its highest-precedence group with a K3s version."""
    group: str | None = None
    for layer in layers:  # lowest precedence first
        k3s = layer.patch.k3s
        if k3s is not None and k3s.version is not None and layer.selector.matches(labels):
            group = layer.name
    if group is None:
        return None
    return Member(group, labels.get(K3S_ROLE_LABEL) == "server")


@dataclass(frozen=True)
class Clusters:
    #: The devices to recompute: those asked for plus every member of a cluster whose server
    #: changed (None: every device).
    ids: list[str] | None
    members: dict[str, Member]
    #: group → its server node
    servers: dict[str, str]
    #: server node → what it reported
    reports: dict[str, ServerReport]

    @classmethod
    def load(cls, db: Database, layers: Sequence[Layer], ids: list[str] | None) -> Clusters:
        """Update memberships and servers for ``ids`` (None: all); the writer job's view."""
        # 1. Each device's cluster now; the clusters whose membership changed.
        before = k3s_store.members_of(db, ids)
        affected: set[str] = set()
        for device_id, labels in state_store.labels_of(db, ids):
            member = cluster_of(layers, labels)
            old = before.get(device_id)
            if member != old:
                k3s_store.set_member(db, device_id, member)
                affected.update(m.group for m in (old, member) if m is not None)
        if ids is None:
            affected.update(k3s_store.forget_missing_devices(db))
        # 2. Their server nodes; a cluster whose server changed is recomputed whole.
        servers = k3s_store.servers(db)
        widened = set(ids) if ids is not None else None
        for group in sorted(affected):
            chosen = k3s_store.pick_server(db, group)
            old_server = servers.get(group)
            if chosen == old_server:
                continue
            log.info("k3s cluster %s: server node %s (was %s)", group, chosen, old_server)
            k3s_store.set_server(db, group, chosen)
            if old_server is not None:
                k3s_store.forget_report(db, old_server)  # its token no longer joins anyone
            if chosen is None:
                servers.pop(group, None)
            else:
                servers[group] = chosen
            if widened is not None:
                widened.update(k3s_store.group_members(db, group))
        wanted = sorted(widened) if widened is not None else None
        members = k3s_store.members_of(db, wanted)
        used = {servers[m.group] for m in members.values() if m.group in servers}
        return cls(wanted, members, servers, k3s_store.reports(db, used))

    def place(self, device_id: str, spec: Spec) -> Spec:
        """``spec`` with its K3s role, and for an agent the server node's URL and token."""
        if spec.k3s.version is None:
            return spec
        member = self.members.get(device_id)
        server = self.servers.get(member.group) if member is not None else None
        if server is None or server == device_id:  # a cluster's server, or K3s on its own
            update: dict[str, object] = {"role": "server", "server_url": None, "token": None}
        else:
            report = self.reports.get(server)
            update = {"role": "agent", "server_url": None, "token": None}
            if report is not None:
                update = {
                    "role": "agent",
                    "server_url": report.server_url,
                    "token": report.token,
                    "version": report.version,  # the server node's version: server first
                }
        return spec.model_copy(update={"k3s": spec.k3s.model_copy(update=update)})


def report(db: Database, device_id: str, found: ServerReport) -> tuple[str, list[str]]:
    """Record what ``device_id`` reported as its cluster's server node; the cluster and its
    members, whose specs the caller recomputes. Raises ``NotServer`` otherwise."""
    member = k3s_store.members_of(db, [device_id]).get(device_id)
    if member is None or k3s_store.servers(db).get(member.group) != device_id:
        raise NotServer(f"{device_id} is not the K3s server node of a cluster")
    k3s_store.save_report(db, device_id, found)
    return member.group, k3s_store.group_members(db, member.group)


def forget(db: Database, device_id: str) -> list[str]:
    """A device is deleted: drop its membership and report; the members to recompute when it
    was its cluster's server node (the next one is chosen)."""
    member = k3s_store.members_of(db, [device_id]).get(device_id)
    k3s_store.set_member(db, device_id, None)
    k3s_store.forget_report(db, device_id)
    if member is None or k3s_store.servers(db).get(member.group) != device_id:
        return []
    k3s_store.set_server(db, member.group, k3s_store.pick_server(db, member.group))
    return k3s_store.group_members(db, member.group)


#: What operators see instead of a join token: it lets a machine join the cluster, so only
#: the devices whose spec carries it read it.
REDACTED = "<redacted>"


def redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as operators see it: without the K3s join token."""
    k3s = spec.get("k3s")
    if not isinstance(k3s, dict) or not k3s.get("token"):
        return spec
    return {**spec, "k3s": {**k3s, "token": REDACTED}}
