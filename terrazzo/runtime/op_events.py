"""Events and telemetry of ops: the one builder of `op_start`/`op_end` events, handing events to a
request's listener, forwarding a worker's events exactly once, and recording each finished op (span,
metrics, the request's sample), fused ops included."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from terrazzo.runtime.results import OpSample, RequestState
from terrazzo.runtime.telemetry import Telemetry
from terrazzo.runtime.worker import OpResult


def op_start_event(op: str, pool: str, device: str) -> dict[str, Any]:
    return {"type": "op_start", "op": op, "pool": pool, "device": device}


def op_end_event(op: str, pool: str, device: str, latency_s: float, res: OpResult | None = None,
                 error: str | None = None) -> dict[str, Any]:
    """`op_end` for a finished op: with its worker's timings when it succeeded, else its error."""
    ev: dict[str, Any] = {"type": "op_end", "op": op, "pool": pool, "device": device, "latency_s": latency_s}
    if error is not None or res is None:
        return {**ev, "ok": False, "error": error or "unknown error"}
    return {**ev, "exec_s": res.exec_s, "tokens": res.tokens, "worker": res.worker, "ok": True}


class OpEvents:
    """Per Runtime: where events go and where finished ops are recorded."""

    def __init__(self, telemetry: Telemetry, notes: list[str]) -> None:
        self.telemetry, self.notes = telemetry, notes

    def emit(self, req: RequestState, event: dict[str, Any]) -> None:
        """Hand one event to the request's listener; a listener that raises is dropped (noted), never the run."""
        if req.on_event is None:
            return
        try:
            req.on_event(event)
        except Exception as exc:  # the listener's bug must not fail the request
            req.on_event = None
            self.notes.append(f"request {req.id}: on_event raised {type(exc).__name__}: {exc}; events stopped")

    def worker_events(self, req: RequestState, pool: str, device: str) -> Callable[[dict[str, Any]], None]:
        """Forward a submission's worker events exactly once: a retried op streams its tokens again from
        index 0 (and a retried segment its starts/ends again); those already delivered are dropped."""
        delivered: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        t_prev = time.perf_counter()  # submission, then each fused op's end: the next op's latency starts there

        def forward(ev: dict[str, Any]) -> None:
            nonlocal t_prev
            kind, op = ev.get("type"), ev.get("op", "")
            if kind == "token":
                i = ev.get("index", 0)
                if i < delivered.get(op, 0):
                    return
                delivered[op] = i + 1
            elif kind in ("op_start", "op_end"):  # ops inside a fused segment
                if (kind, op) in seen:
                    return
                seen.add((kind, op))
                ev = {**ev, "pool": pool, "device": device}
                if kind == "op_end":
                    now = time.perf_counter()
                    ev["latency_s"], t_prev = now - t_prev, now
            self.emit(req, ev)

        return forward

    def record(self, req: RequestState, op: str, pool: str, device: str, start_ns: int, latency_s: float,
               res: OpResult | None, error: str | None, **extra: Any) -> None:
        """Record one op: span, metrics, the request's sample."""
        exec_s, tokens, worker = (res.exec_s, res.tokens, res.worker) if res else (None, 0, "")
        self.telemetry.op_done(op, pool, device, req.id, req.span_ctx, start_ns, latency_s, exec_s, tokens, worker,
                               error, extra)
        req.result.samples.append(OpSample(req.id, op, pool, device, latency_s, exec_s, tokens, worker, error,
                                           dict(res.info) if res else {}))

    def failed(self, req: RequestState, op: str, pool: str, device: str, start_ns: int, latency_s: float,
               error: str, **extra: Any) -> None:
        """A failed op: its record and its `op_end` event."""
        self.record(req, op, pool, device, start_ns, latency_s, None, error, **extra)
        self.emit(req, op_end_event(op, pool, device, latency_s, error=error))

    def record_fused(self, req: RequestState, pool: str, device: str, label: str, done: list[dict], start_ns: int,
                     round_trip_s: float, res: OpResult | None) -> int:
        """Samples for the fused ops that completed. Op i's latency runs from its start to the next op's
        start in the worker (the glue in between is part of it); the round trip's queueing and transport
        go to the first op. Returns where the next op's span starts."""
        if not done:
            return start_ns
        worker_s = res.exec_s if res is not None else done[-1]["start_s"] + done[-1]["exec_s"]
        starts = [d["start_s"] for d in done] + [worker_s]
        overhead_s = max(round_trip_s - worker_s, 0.0) if res is not None else 0.0
        t_ns = start_ns
        worker, pid = (res.worker, res.pid) if res is not None else (done[0].get("worker", ""), 0)
        for i, d in enumerate(done):
            lat = starts[i + 1] - starts[i] + (overhead_s + starts[0] if i == 0 else 0.0)
            self.record(req, d["op"], pool, device, t_ns, lat,
                        OpResult(None, d["exec_s"], worker, pid, d["tokens"], d["info"]), None, fused=label)
            t_ns += int(lat * 1e9)
        return t_ns
