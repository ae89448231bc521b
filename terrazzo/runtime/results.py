"""What a request produces (its result and one sample per op) and the state it carries while it runs."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OpSample:
    request_id: str
    op: str
    pool: str
    device: str
    latency_s: float          # submit → result, as the orchestrator sees it
    exec_s: float | None      # inside the worker
    tokens: int = 0
    worker: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestResult:
    request_id: str
    input: str
    ok: bool
    text: str = ""
    error: str | None = None
    error_kind: str | None = None  # the failure's exception type: Overloaded, OpTimeout, WorkerLost, ExecutionError
    e2e_s: float = 0.0
    path: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    samples: list[OpSample] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False   # an LLM of the agent is a random-weight checkpoint: its text is gibberish


@dataclass
class RequestState:
    """One running request: its RNG (seeded per request id), loop counters, step budget, span and listener."""

    id: str
    rng: random.Random
    result: RequestResult
    loops: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    span: Any = None
    span_ctx: Any = None
    on_event: Callable[[dict[str, Any]], None] | None = None
    tenant: str = "default"   # who the request is for: KV is never shared across tenants (kv/prefix_keys.py)
    scope: str = ""           # its session (tenant-qualified by the server), else "once:<id>": the KV scope
