"""Agent memory (memory_load / memory_store nodes): a SQLite file shared by every worker process,
keyed by store and session, so a conversation survives worker restarts and pool boundaries. Writes carry
a key (request, op, content), so a store retried after its worker died adds no second row."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class MemoryStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS memory (store TEXT, session TEXT, ts REAL, text TEXT)")
        if "key" not in {row[1] for row in self.db.execute("PRAGMA table_info(memory)")}:  # older files
            self.db.execute("ALTER TABLE memory ADD COLUMN key TEXT")
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS memory_key ON memory (key)")

    def load(self, store: str, session: str, limit: int = 8) -> list[str]:
        rows = self.db.execute("SELECT text FROM memory WHERE store=? AND session=? ORDER BY rowid DESC LIMIT ?",
                               (store, session, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def store(self, store: str, session: str, text: str, key: str | None = None) -> None:
        """Append `text`; with a `key`, a second store under the same key (a retried op) is a no-op."""
        self.db.execute("INSERT OR IGNORE INTO memory (store, session, ts, text, key) "
                        "VALUES (?, ?, julianday('now'), ?, ?)", (store, session, text, key))
