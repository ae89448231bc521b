"""One SQLite file shared by every process and thread that keeps request state (agent memory, the
idempotency store). A connection is never shared: each thread of each process opens its own (Ray runs
actor calls on its own threads; a forked child must not reuse its parent's), and the file is in WAL
mode with a busy timeout, so concurrent writers from worker processes and actors queue instead of failing."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path


class StateDb:
    def __init__(self, path: str | Path, schema: Callable[[sqlite3.Connection], None]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._schema = schema
        self._local = threading.local()
        self.connection()  # create the tables now, so errors show at start, not at first use

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use in a thread, again after a fork)."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._schema(db)
        self._local.held = (os.getpid(), db)
        return db

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        return self.connection().execute(sql, args)
