"""Agent memory (memory_load / memory_store nodes): a SQLite file shared by every worker process,
keyed by store and session, so a conversation survives worker restarts and pool boundaries."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class MemoryStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS memory (store TEXT, session TEXT, ts REAL, text TEXT)")

    def load(self, store: str, session: str, limit: int = 8) -> list[str]:
        rows = self.db.execute("SELECT text FROM memory WHERE store=? AND session=? ORDER BY rowid DESC LIMIT ?",
                               (store, session, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def store(self, store: str, session: str, text: str) -> None:
        self.db.execute("INSERT INTO memory VALUES (?, ?, julianday('now'), ?)", (store, session, text))
