"""Operations: every change an operator or a device can make, one function each.

An operation takes typed arguments (the store, the actor, typed inputs), runs **one** writer
job and returns a frozen result whose ``changes`` (:class:`Changes`) say what the commit
means for the world outside the database: devices to nudge, devices whose certificates
were revoked, events for live views. It performs no side effect itself; the post-commit
:class:`edge_server.notifier.Notifier` does, so every caller gets them the same way::

    done = await app[NOTIFIER].run(ops.devices.delete(app[STORE], actor, device_id))

Reads that callers need (lists, shows) live next to the operations of their area and
return typed rows too, so nothing outside ``store/`` and ``ops/`` touches the store.

Modules: ``tokens`` (registration tokens), ``registration`` (wraps ``registrar``),
``devices`` (label, override, delete, reset), ``groups`` (create, update, delete),
``status`` (status events, presence), ``api_tokens``, ``artifacts`` (the artifact mirror:
import, delete; specs name artifacts through ``edge_server.artifact_refs``).
"""

from edge_server.ops.changes import Actor, Changes, Done, Event

__all__ = ["Actor", "Changes", "Done", "Event"]
