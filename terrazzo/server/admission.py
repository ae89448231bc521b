"""Bounded admission per agent: a cap on requests in flight, and a refusal up front when a pool the
agent uses has a full queue, both answered with 429 and a Retry-After computed from the measured drain
rate (answers per second while requests were in flight); 503 while the agent starts or the server
drains. Nothing queues without bound."""

from __future__ import annotations

import math
from collections.abc import Callable

from terrazzo.server.api_errors import ApiError
from terrazzo.server.rates import BusyTime, RateMeter, Window

MAX_RETRY_AFTER_S = 120


def retry_after_s(backlog: float, rate_per_s: float | None, item_s: float, parallel: int = 1) -> int:
    """Seconds until `backlog` items drain at the measured drain `rate_per_s` (wait = backlog / rate); before
    anything was measured, in waves of `parallel` items (the narrowest pool's workers) of `item_s` each (the
    mean or predicted latency). Whole seconds, 1..120, as HTTP's Retry-After wants."""
    measured = rate_per_s is not None and rate_per_s > 0
    wait = backlog / rate_per_s if measured else math.ceil(backlog / max(parallel, 1)) * item_s  # type: ignore[operator]
    return int(min(max(math.ceil(wait), 1), MAX_RETRY_AFTER_S))


class Admission:
    def __init__(self, agent: str, max_in_flight: int, queue_limit: int, window_s: float,
                 predicted_e2e_s: float | None, clock: Callable[[], float]) -> None:
        self.agent, self.max_in_flight, self.queue_limit = agent, max_in_flight, queue_limit
        self.clock, self.predicted_e2e_s = clock, predicted_e2e_s
        self.in_flight = 0
        self.completions = RateMeter(window_s, clock())     # requests finished per second
        self.e2e = Window(window_s)
        self.pool_ops: dict[str, RateMeter] = {}            # ops finished per second, per pool
        self.busy = BusyTime(window_s)                      # time with requests in flight (the drain's span)
        self.window_s = window_s
        self.parallel = 1                                   # workers of the narrowest pool, at the last admit

    def service_rate(self) -> float | None:
        """Requests answered per second of the window (what /metrics reports)."""
        now = self.clock()
        return self.completions.rate(now) if self.completions.count(now) else None

    def drain_rate(self) -> float | None:
        """Requests answered per second while requests were in flight: how fast a backlog drains."""
        now = self.clock()
        busy_s = self.busy.seconds(now)
        n = self.completions.count(now)
        return n / busy_s if n and busy_s > 0 else None

    def _one_request_s(self) -> float:
        return self.e2e.mean(self.clock()) or self.predicted_e2e_s or 1.0

    def retry_after(self) -> int:
        """For a full in-flight cap: the time the requests now in flight take to finish."""
        return retry_after_s(self.in_flight, self.drain_rate(), self._one_request_s(), self.parallel)

    def admit(self, load: dict[str, dict[str, int]], pools: set[str]) -> None:
        """Take one in-flight slot, or raise 429 naming what is full."""
        widths = [load[p].get("workers", 1) for p in pools if p in load]
        self.parallel = max(min(widths), 1) if widths else 1
        if self.in_flight >= self.max_in_flight:
            after = self.retry_after()
            raise ApiError(429, f"agent '{self.agent}' has {self.in_flight} requests in flight, its limit",
                           type="rate_limit_error", code="in_flight_limit", retry_after_s=after,
                           fix=f"retry after {after} s, or raise limits.max_in_flight / add replicas",
                           headers={"Retry-After": str(after)})
        for pool in sorted(pools):
            queued = load.get(pool, {}).get("queued", 0)
            if queued >= self.queue_limit:
                after = self.pool_retry_after(pool, queued)
                raise ApiError(429, f"pool '{pool}' of agent '{self.agent}' has a full queue ({queued} ops waiting)",
                               type="rate_limit_error", code="pool_queue_full", retry_after_s=after,
                               fix=f"retry after {after} s, or give the pool more workers (queue_depth in the "
                                   "run config bounds its queue)", headers={"Retry-After": str(after)})
        self.in_flight += 1
        self.busy.start(self.clock())

    def pool_retry_after(self, pool: str, queued: int) -> int:
        now = self.clock()
        meter, busy_s = self.pool_ops.get(pool), self.busy.seconds(now)
        n = meter.count(now) if meter is not None else 0
        return retry_after_s(queued, n / busy_s if n and busy_s > 0 else None, self._one_request_s(), self.parallel)

    def release(self, e2e_s: float | None, pools_done: list[str]) -> None:
        """One admitted request ended; `e2e_s` when it ran to an answer, `pools_done` one entry per op."""
        self.in_flight -= 1
        now = self.clock()
        if self.in_flight == 0:
            self.busy.stop(now)
        if e2e_s is not None:
            self.completions.add(now)
            self.e2e.add(now, e2e_s)
        for pool in pools_done:
            self.pool_ops.setdefault(pool, RateMeter(self.window_s, self.completions.start_s)).add(now)
