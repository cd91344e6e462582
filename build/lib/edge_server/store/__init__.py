"""All SQL lives in this package. Handlers reach it through :class:`Store` read/write jobs."""

from edge_server.store.db import Store, connect

__all__ = ["Store", "connect"]
