"""What devices report: status events (over MQTT or ``POST …/status``) and presence.

Both transports call :func:`apply_status`, so the rules hold the same on each: every
``(device, seq)`` is applied once and in order (``store.state.apply_status``), and a batch
claiming to have observed a generation the device was never given is refused whole.
"""

from __future__ import annotations

from sqlite_utils import Database

from edge_server.errors import Conflict
from edge_server.ops.changes import NOTHING, Actor, Changes, Done, Event
from edge_server.specs import Change
from edge_server.store import Store
from edge_server.store import state as state_store
from registration.desired import StatusAck, StatusBatch


class GenerationAhead(Conflict):
    code = "observed_generation_ahead"


async def apply_status(
    store: Store, device_id: str, batch: StatusBatch, via: str
) -> Done[StatusAck]:
    """Apply a batch; the answer acknowledges the highest seq the server holds. The device is
    nudged with that seq so an agent that lost the answer learns it."""
    events = [e.model_dump() for e in batch.events]

    def write(db: Database) -> tuple[int, int, int]:
        acked, applied, generation = state_store.apply_status(db, device_id, events, via)
        claimed = max((e.observed_generation for e in batch.events), default=0)
        if generation and claimed > generation:
            # Raising rolls this job's savepoint back: nothing of the batch is kept.
            raise GenerationAhead(
                f"observed_generation {claimed} is ahead of the device's generation "
                f"{generation}; a device can only observe a spec it was given"
            )
        return acked, applied, generation

    acked, applied, generation = await store.write(write)
    actor = Actor.device(device_id).name
    return Done(
        StatusAck(acked_seq=acked, applied=applied),
        Changes.of(
            *([Event("device.status", device_id, actor)] if applied else []),
            nudges=[Change(device_id, generation, acked)] if generation else [],
        ),
    )


async def presence(store: Store, device_id: str, online: bool) -> Done[bool]:
    """Record a device's presence (MQTT will or ``online`` message). False: no such device."""
    known = await store.write(lambda db: state_store.set_presence(db, device_id, online))
    if not known:
        return Done(False, NOTHING)
    kind = "device.online" if online else "device.offline"
    return Done(True, Changes.of(Event(kind, device_id, Actor.device(device_id).name)))


async def pending_nudges(store: Store) -> list[Change]:
    """Devices that have not yet observed their spec, to nudge again after a reconnect."""
    rows = await store.read(state_store.pending_nudges)
    return [Change(device_id, generation, acked) for device_id, generation, acked in rows]


async def all_offline(store: Store) -> None:
    """At start: nobody is connected yet; presence messages say who comes back."""
    await store.write(state_store.mark_all_offline)
