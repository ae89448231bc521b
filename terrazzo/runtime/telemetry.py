"""OpenTelemetry spans per op and request, Prometheus metrics per pool.

Each Runtime owns its TracerProvider and CollectorRegistry (not the process globals), so several
runtimes — tests, a server with two agents — never mix their numbers. Spans go to an in-memory
exporter (readable by the report and tests) and, when configured, to any extra span processor.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Telemetry:
    def __init__(self, extra_processor: SpanProcessor | None = None, tokens_window_s: float = 10.0) -> None:
        self.spans = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        if extra_processor is not None:
            self.provider.add_span_processor(extra_processor)
        self.tracer = self.provider.get_tracer("terrazzo.runtime")
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("tz_pool_queue_depth", "ops waiting for a worker", ["pool", "device"], registry=r)
        self.latency = Histogram("tz_op_latency_seconds", "op latency seen by the orchestrator (queue + transport + "
                                 "execution)", ["pool", "device", "op"], buckets=_BUCKETS_S, registry=r)
        self.exec_time = Histogram("tz_op_exec_seconds", "op execution time inside the worker",
                                   ["pool", "device", "op"], buckets=_BUCKETS_S, registry=r)
        self.tokens = Counter("tz_pool_tokens", "LLM tokens processed (prompt for prefill, generated for decode)",
                              ["pool", "device"], registry=r)
        self.tokens_per_s = Gauge("tz_pool_tokens_per_second", "tokens/s over the last window", ["pool", "device"],
                                  registry=r)
        self.ops = Counter("tz_ops", "ops finished", ["pool", "op", "status"], registry=r)
        self.requests = Counter("tz_requests", "requests finished", ["status"], registry=r)
        self._window_s = tokens_window_s
        self._recent: dict[str, deque[tuple[float, int]]] = {}
        self._devices: dict[str, str] = {}

    def set_queue_depth(self, pool: str, depth: int) -> None:
        self.queue_depth.labels(pool, self._devices.get(pool, "")).set(depth)

    def register_pool(self, pool: str, device: str) -> None:
        self._devices[pool] = device
        self.queue_depth.labels(pool, device).set(0)

    @contextmanager
    def op_span(self, op: str, pool: str, device: str, request_id: str, parent: Any = None):
        from opentelemetry import trace

        ctx = trace.set_span_in_context(parent) if parent is not None else None
        with self.tracer.start_as_current_span(f"op {op}", context=ctx) as span:
            span.set_attributes({"tz.op": op, "tz.pool": pool, "tz.device": device, "tz.request": request_id})
            yield span

    def record_op(self, span: Any, op: str, pool: str, device: str, latency_s: float, exec_s: float | None,
                  tokens: int, error: str | None) -> None:
        span.set_attribute("tz.latency_s", latency_s)
        if exec_s is not None:
            span.set_attribute("tz.exec_s", exec_s)
            self.exec_time.labels(pool, device, op).observe(exec_s)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        self.latency.labels(pool, device, op).observe(latency_s)
        self.ops.labels(pool, op, "error" if error else "ok").inc()
        if tokens:
            self.tokens.labels(pool, device).inc(tokens)
            now = time.monotonic()
            win = self._recent.setdefault(pool, deque())
            win.append((now, tokens))
            while win and win[0][0] < now - self._window_s:
                win.popleft()
            self.tokens_per_s.labels(pool, device).set(sum(t for _, t in win) / self._window_s)

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()

    def finished_spans(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def shutdown(self) -> None:
        self.provider.shutdown()
