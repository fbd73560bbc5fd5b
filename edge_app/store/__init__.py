"""Local log (SQLite): sessions, counted cells, corrections, results, outbox."""

from edge_app.store.db import DB_NAME, Store, StoreError, utcnow

__all__ = ["DB_NAME", "Store", "StoreError", "utcnow"]
