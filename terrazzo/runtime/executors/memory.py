"""Agent memory (memory_load / memory_store nodes): a SQLite file shared by every worker process and
thread, keyed by store and session, so a conversation survives worker restarts and pool boundaries.
The session key is the caller's: the server prefixes it with the tenant, and a request without a session
gets a key of its own (no shared history). Writes carry a key (request, op, content), so a store retried
after its worker died adds no second row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from terrazzo.runtime.state_db import StateDb


def _schema(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS memory (store TEXT, session TEXT, ts REAL, text TEXT)")
    if "key" not in {row[1] for row in db.execute("PRAGMA table_info(memory)")}:  # older files
        db.execute("ALTER TABLE memory ADD COLUMN key TEXT")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS memory_key ON memory (key)")
    db.execute("CREATE INDEX IF NOT EXISTS memory_session ON memory (store, session)")


class MemoryStore:
    def __init__(self, path: Path) -> None:
        self.db = StateDb(path, _schema)

    def load(self, store: str, session: str, limit: int = 8) -> list[str]:
        rows = self.db.execute("SELECT text FROM memory WHERE store=? AND session=? ORDER BY rowid DESC LIMIT ?",
                               (store, session, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def store(self, store: str, session: str, text: str, key: str | None = None) -> None:
        """Append `text`; with a `key`, a second store under the same key (a retried op) is a no-op."""
        self.db.execute("INSERT OR IGNORE INTO memory (store, session, ts, text, key) "
                        "VALUES (?, ?, julianday('now'), ?, ?)", (store, session, text, key))
