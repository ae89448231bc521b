"""Callables for fault drills and tests, importable by worker processes ('drills:fn').

They are real tools with real side effects (sleeping, exiting the process), not stand-ins for
runtime components: the drills kill and hang the actual workers that run them.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


def echo(query: str, **_: object) -> str:
    return f"echo: {query}"


def slow_echo(query: str, **_: object) -> str:
    """'sleep:S rest' sleeps S seconds first (S may be large: a hung tool)."""
    head, _, rest = query.partition(" ")
    if head.startswith("sleep:"):
        time.sleep(float(head.removeprefix("sleep:")))
    return f"echo: {rest or query}"


def crash_once(query: str, marker_dir: str = "", **_: object) -> str:
    """Exit the worker process abruptly the first time a query is seen (marker file per query), so the
    retry on another replica succeeds."""
    key = hashlib.sha256(query.encode()).hexdigest()[:16]  # not hash(): it differs between processes
    marker = Path(marker_dir or os.environ.get("TZ_CRASH_DIR", "/tmp")) / f"crashed-{key}"
    if "crash" in query and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(17)
    return f"survived: {query}"


def tool_caller(message: dict) -> str:
    """A compute node that asks for the `search` tool until it has two results (drives branch+loop tests)."""
    if len(message.get("tool_results", [])) < 2:
        return '<tool_call>{"name": "search", "arguments": {"query": "weather"}}</tool_call>'
    return "final answer after " + str(len(message["tool_results"])) + " searches"


def noop(message: dict) -> dict:
    return {}


def nap_echo(query: str, **_: object) -> str:
    """Sleeps S seconds for a 'nap:S' word anywhere in the query (a second slow tool, independent of slow_echo)."""
    for word in query.split():
        if word.startswith("nap:"):
            time.sleep(float(word.removeprefix("nap:")))
    return f"napped: {query}"


def recall(message: dict) -> str:
    """A compute node that answers with the conversation it was given (memory_load's history), so a test
    can see exactly which history a request read."""
    history = " | ".join(message.get("history", []))
    return f"heard: {message['input']} || history: {history}"


def effects_dir() -> Path:
    d = Path(os.environ.get("TZ_EFFECTS_DIR", "/tmp/tz-effects"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def charge(query: str, **_: object) -> str:
    """A tool with a side effect that must not happen twice: appends one line per call to a ledger file
    (TZ_EFFECTS_DIR/ledger). 'sleep:S' words make it slow; 'crash-after' makes its worker die right after
    acting, before it answers (the worst case for a retry)."""
    with open(effects_dir() / "ledger", "a") as f:
        f.write(query + "\n")
        f.flush()
        os.fsync(f.fileno())
    for word in query.split():
        if word.startswith("sleep:"):
            time.sleep(float(word.removeprefix("sleep:")))
    if "crash-after" in query:
        os._exit(23)
    return f"charged: {query}"


def ledger() -> list[str]:
    path = effects_dir() / "ledger"
    return path.read_text().splitlines() if path.exists() else []


def fail_with_path(query: str, **_: object) -> str:
    """A tool that fails with an internal path in its message (what error bodies must not show)."""
    raise FileNotFoundError(f"/srv/secret/config/{query}.yaml")
