"""OpenTelemetry spans per op and request, Prometheus metrics per pool.

Each Runtime owns its TracerProvider and CollectorRegistry (not the process globals), so several
runtimes — tests, a server with two agents — never mix their numbers. Spans go to an in-memory
exporter keeping the most recent spans (readable by the report and tests) and, when configured, to any
extra span processor.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _RecentSpans(SpanProcessor):
    """Keeps the last `max_spans` finished spans in memory (a long-running server must not grow without
    bound; ship spans elsewhere with an extra span processor)."""

    def __init__(self, max_spans: int) -> None:
        self.finished: deque[ReadableSpan] = deque(maxlen=max_spans)

    def on_end(self, span: ReadableSpan) -> None:
        self.finished.append(span)


class Telemetry:
    def __init__(self, extra_processor: SpanProcessor | None = None, tokens_window_s: float = 10.0,
                 max_spans: int = 20_000) -> None:
        self.spans = _RecentSpans(max_spans)
        self.provider = TracerProvider()
        self._processors: list[SpanProcessor] = [self.spans, *([extra_processor] if extra_processor else [])]
        for proc in self._processors:
            self.provider.add_span_processor(proc)
        self.tracer = self.provider.get_tracer("terrazzo.runtime")
        self._scope = InstrumentationScope("terrazzo.runtime")
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
        self._metric_children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._depth_gauges: dict[str, Any] = {}

    def set_queue_depth(self, pool: str, depth: int) -> None:
        gauge = self._depth_gauges.get(pool)
        if gauge is None:
            gauge = self._depth_gauges[pool] = self.queue_depth.labels(pool, self._devices.get(pool, ""))
        gauge.set(depth)

    def register_pool(self, pool: str, device: str) -> None:
        self._devices[pool] = device
        self.queue_depth.labels(pool, device).set(0)

    @staticmethod
    def context_of(span: Any) -> SpanContext:
        """The span context the op spans of a request name as their parent (looked up once per request)."""
        return span.get_span_context()

    def _children(self, pool: str, device: str, op: str) -> tuple[Any, Any, Any, Any]:
        key = (pool, device, op)
        found = self._metric_children.get(key)
        if found is None:  # labels() costs a lock and a dict lookup per call: resolve each series once
            found = self._metric_children[key] = (
                self.latency.labels(pool, device, op), self.exec_time.labels(pool, device, op),
                self.ops.labels(pool, op, "ok"), self.ops.labels(pool, op, "error"))
        return found

    def op_done(self, op: str, pool: str, device: str, request_id: str, parent: SpanContext, start_ns: int,
                latency_s: float, exec_s: float | None, tokens: int, worker: str, error: str | None,
                extra: dict[str, Any] | None = None) -> None:
        """One finished op: its span (start and end given, so ops fused into one worker round trip get
        their own spans too) and its metrics."""
        attrs: dict[str, Any] = {"tz.op": op, "tz.pool": pool, "tz.device": device, "tz.request": request_id,
                                 "tz.latency_s": latency_s, "tz.worker": worker}
        if exec_s is not None:
            attrs["tz.exec_s"] = exec_s
        if extra:
            attrs.update({f"tz.{k}": v for k, v in extra.items()})
        if parent.trace_flags.sampled:
            # the op already ran (maybe in a worker, fused with others): its span is built finished, as the
            # SDK's immutable ReadableSpan handed to the span processors — a twentieth of a live span's cost
            ctx = SpanContext(parent.trace_id, random.getrandbits(64), False, parent.trace_flags, parent.trace_state)
            span = ReadableSpan(f"op {op}", ctx, parent, self.provider.resource, attrs, kind=SpanKind.INTERNAL,
                                status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                                start_time=start_ns, end_time=start_ns + int(latency_s * 1e9),
                                instrumentation_scope=self._scope)
            for proc in self._processors:
                proc.on_end(span)
        lat, ex, ok, err = self._children(pool, device, op)
        lat.observe(latency_s)
        if exec_s is not None:
            ex.observe(exec_s)
        (err if error else ok).inc()
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
        return list(self.spans.finished)

    def shutdown(self) -> None:
        self.provider.shutdown()
