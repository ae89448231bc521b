"""Bounded admission per agent: a cap on requests in flight, and a refusal up front when a pool the
agent uses has a full queue, both answered with 429 and a Retry-After computed from the measured
service rate; 503 while the agent starts or the server drains. Nothing queues without bound."""

from __future__ import annotations

import math
from collections.abc import Callable

from terrazzo.server.api_errors import ApiError
from terrazzo.server.rates import RateMeter, Window

MAX_RETRY_AFTER_S = 120


def retry_after_s(backlog: float, rate_per_s: float | None, item_s: float) -> int:
    """Seconds until `backlog` items drain at the measured `rate_per_s` (wait = backlog / rate); before
    anything was measured, at one item per `item_s` (the mean or predicted latency). Whole seconds,
    1..120, as HTTP's Retry-After wants."""
    wait = backlog / rate_per_s if rate_per_s and rate_per_s > 0 else backlog * item_s
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
        self.window_s = window_s

    def service_rate(self) -> float | None:
        now = self.clock()
        return self.completions.rate(now) if self.completions.count(now) else None

    def _one_request_s(self) -> float:
        return self.e2e.mean(self.clock()) or self.predicted_e2e_s or 1.0

    def retry_after(self) -> int:
        """For a full in-flight cap: the time the requests now in flight take to finish."""
        return retry_after_s(self.in_flight, self.service_rate(), self._one_request_s())

    def admit(self, load: dict[str, dict[str, int]], pools: set[str]) -> None:
        """Take one in-flight slot, or raise 429 naming what is full."""
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

    def pool_retry_after(self, pool: str, queued: int) -> int:
        now = self.clock()
        meter = self.pool_ops.get(pool)
        rate = meter.rate(now) if meter is not None and meter.count(now) else None
        return retry_after_s(queued, rate, self._one_request_s())

    def release(self, e2e_s: float | None, pools_done: list[str]) -> None:
        """One admitted request ended; `e2e_s` when it ran to an answer, `pools_done` one entry per op."""
        self.in_flight -= 1
        now = self.clock()
        if e2e_s is not None:
            self.completions.add(now)
            self.e2e.add(now, e2e_s)
        for pool in pools_done:
            self.pool_ops.setdefault(pool, RateMeter(self.window_s, self.completions.start_s)).add(now)
