"""The idempotency store: one SQLite file (in the run's state_dir) keyed by tenant and request id, kept for a
retention window. It holds two things:

- requests: the answer of each completed request, so a resend of the same id is answered from here and
  not run again (the server's invoke route);
- effects: every call of a tool that is not idempotent, claimed before it starts and settled with its
  output, so one (request id, op, arguments) runs such a tool at most once — a resend after a client left,
  after a worker was killed mid-call, or after the server restarted gets the recorded output, or, when the
  call was cut off and may have acted, an error that says so. Never a second call.

The file is shared by the server and every worker process or Ray actor on the machine (state_db.StateDb:
one connection per thread and process); on a multi-node Ray cluster state_dir must be shared storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.state_db import StateDb

DEFAULT_RETENTION_S = 86_400.0
FILE_NAME = "idempotency.sqlite"


def _schema(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS requests (tenant TEXT NOT NULL, request_id TEXT NOT NULL, "
               "fingerprint TEXT, state TEXT NOT NULL, created_s REAL NOT NULL, result TEXT, "
               "PRIMARY KEY (tenant, request_id))")
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, request_id TEXT, op TEXT, "
               "owner TEXT, state TEXT NOT NULL, created_s REAL NOT NULL, output TEXT)")


@dataclass(frozen=True)
class RequestRecord:
    state: str                      # "running" or "done"
    fingerprint: str | None
    created_s: float
    result: dict[str, Any] | None   # the answer, once done


def effect_key(request_id: str, op: str, query: str, args: dict[str, Any]) -> str:
    """One tool call: the request, the op, and what it was asked (a loop asking the same thing gets the same)."""
    blob = json.dumps([request_id, op, query, args], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_dead(owner: str) -> bool:
    """True when the process that claimed an effect is gone (only decidable on this host)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class IdempotencyStore:
    def __init__(self, path: str | Path, retention_s: float = DEFAULT_RETENTION_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.retention_s, self.clock = StateDb(path, _schema), retention_s, clock

    @classmethod
    def in_dir(cls, state_dir: str | Path, retention_s: float = DEFAULT_RETENTION_S) -> IdempotencyStore:
        return cls(Path(state_dir) / FILE_NAME, retention_s)

    def prune(self) -> int:
        """Forget requests and effects older than the retention window; returns how many rows went."""
        cut = self.clock() - self.retention_s
        n = self.db.execute("DELETE FROM requests WHERE created_s < ?", (cut,)).rowcount
        return n + self.db.execute("DELETE FROM effects WHERE created_s < ?", (cut,)).rowcount

    # --- requests -------------------------------------------------------------------------------
    def lookup(self, tenant: str, request_id: str) -> RequestRecord | None:
        row = self.db.execute("SELECT state, fingerprint, created_s, result FROM requests WHERE tenant=? AND "
                              "request_id=? AND created_s >= ?",
                              (tenant, request_id, self.clock() - self.retention_s)).fetchone()
        if row is None:
            return None
        return RequestRecord(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None)

    def started(self, tenant: str, request_id: str, fingerprint: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO requests (tenant, request_id, fingerprint, state, created_s) "
                        "VALUES (?, ?, ?, 'running', ?)", (tenant, request_id, fingerprint, self.clock()))

    def finished(self, tenant: str, request_id: str, result: dict[str, Any]) -> None:
        self.db.execute("UPDATE requests SET state='done', result=? WHERE tenant=? AND request_id=?",
                        (json.dumps(result, default=str), tenant, request_id))

    def forget(self, tenant: str, request_id: str) -> None:
        """A request that ended without an answer: a resend runs it again (its effects stay recorded)."""
        self.db.execute("DELETE FROM requests WHERE tenant=? AND request_id=? AND state='running'",
                        (tenant, request_id))

    # --- effects of tools that are not idempotent -------------------------------------------------
    def once(self, key: str, request_id: str, op: str, run: Callable[[], str], wait_s: float) -> str:
        """Run `run()` unless this key already ran: then its recorded output (or the error it recorded).
        A claim held by a live process is waited for (at most `wait_s`); one whose process died, or that is
        still open after the wait, fails: the call may have acted, so it is not made again."""
        owner = self._claim(key, request_id, op)
        if owner is None:
            try:
                out = run()
            except Exception as exc:
                self._settle(key, "failed", str(exc))
                raise
            self._settle(key, "done", out)
            return out
        deadline = time.monotonic() + wait_s
        while True:
            row = self.db.execute("SELECT state, owner, output FROM effects WHERE key=?", (key,)).fetchone()
            if row is None:  # pruned meanwhile: nothing recorded any more, so nothing to protect
                return self.once(key, request_id, op, run, wait_s)
            state, holder, output = row
            if state == "done":
                return str(output)
            if state == "failed":
                raise ExecutionError(f"this tool call already ran for request '{request_id}' and failed: {output}",
                                     fix="send the request with a new request_id to call the tool again")
            if _owner_dead(holder) or time.monotonic() >= deadline:
                raise ExecutionError(f"the tool may already have acted for request '{request_id}': its earlier "
                                     "call was cut off (its worker died) before it answered, and a tool that is "
                                     "not idempotent is never called twice for one request id",
                                     fix="check the tool's side effect; send a new request_id to call it again")
            time.sleep(0.05)

    def _claim(self, key: str, request_id: str, op: str) -> str | None:
        """None when this call now holds the claim; else the owner of the existing one."""
        cur = self.db.execute("INSERT OR IGNORE INTO effects (key, request_id, op, owner, state, created_s) "
                              "VALUES (?, ?, ?, ?, 'running', ?)", (key, request_id, op, _owner(), self.clock()))
        if cur.rowcount == 1:
            return None
        row = self.db.execute("SELECT owner FROM effects WHERE key=?", (key,)).fetchone()
        return row[0] if row else ""

    def _settle(self, key: str, state: str, output: str) -> None:
        self.db.execute("UPDATE effects SET state=?, output=? WHERE key=?", (state, output, key))

    def effects(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded tool calls (for drills and benchmarks)."""
        sql, args = "SELECT key, request_id, op, state FROM effects", tuple[str, ...]()
        if request_id is not None:
            sql, args = sql + " WHERE request_id=?", (request_id,)
        return [dict(zip(("key", "request_id", "op", "state"), r, strict=True))
                for r in self.db.execute(sql, args).fetchall()]
