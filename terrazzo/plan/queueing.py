"""Tail latency of a first-token pool under load, so replicas are sized for the SLA's percentile.

The throughput count ⌈demand / (u·rate)⌉ keeps a pool busy at most a share u of the time, but a
prompt that arrives while every slot is busy waits, and at the 99th percentile that wait can exceed
the prefill itself (a prefill pool at 73 % utilisation waits ~3.5× its mean service at p99). The SLA
bounds TTFT at a percentile, so a first-token op's replicas are the fewest whose percentile
wait plus percentile service stays within the limit.

Wait model: G/G/c. Erlang C gives the probability of waiting and, for Poisson arrivals and
exponential service, the tail P(W > t) = C·exp(−(cμ − λ)t); other variability scales the wait by
(c_a² + c_s²)/2 (Kingman / Allen–Cunneen), c² being squared coefficients of variation: c_s² the
prompt length's (prefill is affine in tokens), c_a² 1 for Poisson arrivals, or what a simulation of
the plan measured (verify/replan.py).

Clumps: behind a batched LLM pool requests arrive several at the same instant (sequences admitted
between two decode steps of a prefill-first replica finish in the same step). A request then also
waits for the members of its own clump served before it, whatever the load, which the scaled M/M/c
tail above (zero once under 1 − p of arrivals find every server busy) cannot express. `clump_wait_s`
adds that wait: a clump's size-biased mean `clump` requests (1: arrivals one at a time), the number
ahead of a request in its clump geometric with mean (clump − 1) / 2, served `servers` at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache


def erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in M/M/c with `offered` = λ/μ erlangs (1 when unstable)."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    blocking = 1.0  # Erlang B by its recursion: stable for thousands of servers
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    rho = offered / servers
    return blocking / (1 - rho * (1 - blocking))


def wait_quantile_s(servers: int, arrival_per_s: float, service_s: float, arrival_scv: float, service_scv: float,
                    percentile: float) -> float:
    """The `percentile` (e.g. 99) of the queueing wait: 0 when fewer than 1 − p of arrivals wait at all."""
    if arrival_per_s <= 0:
        return 0.0
    spare_per_s = servers / service_s - arrival_per_s
    if spare_per_s <= 0:
        return math.inf
    waiting = erlang_c(servers, arrival_per_s * service_s)
    tail = 1 - percentile / 100
    if waiting <= tail:
        return 0.0
    return (arrival_scv + service_scv) / 2 * math.log(waiting / tail) / spare_per_s


def clump_wait_s(clump: float, servers: int, service_s: float, percentile: float) -> float:
    """The `percentile` of the wait behind one's own clump: arrivals come `clump` at a time (size-biased
    mean; 1 or less: one at a time), `servers` of them served at once, each for `service_s`. The number
    ahead is geometric (P(≥ k) = q^k, q = (clump − 1) / (clump + 1), mean (clump − 1) / 2)."""
    if clump <= 1 or servers <= 0 or percentile >= 100:
        return 0.0
    q = (clump - 1) / (clump + 1)
    ahead = math.log(1 - percentile / 100) / math.log(q)
    return ahead / servers * service_s


@lru_cache(maxsize=65536)
def servers_for(arrival_per_s: float, service_s: float, tail_service_s: float, arrival_scv: float,
                service_scv: float, percentile: float, limit_s: float, at_least: int,
                slots_per_replica: int = 1, clump: float = 1.0, clump_lanes_per_replica: int = 1,
                clump_service_s: float = 0.0) -> int | None:
    """Fewest replicas (≥ `at_least`) whose percentile wait plus `tail_service_s` is within `limit_s`;
    None when even an idle pool misses it. A replica holds `slots_per_replica` prompts at once; with
    arrivals in clumps, it works through a clump `clump_lanes_per_replica` prompts at a time, each for
    `clump_service_s`."""
    if tail_service_s > limit_s:
        return None

    def ok(n: int) -> bool:
        return tail_service_s + wait_quantile_s(n * slots_per_replica, arrival_per_s, service_s, arrival_scv,
                                                service_scv, percentile) + clump_wait_s(
            clump, n * clump_lanes_per_replica, clump_service_s, percentile) <= limit_s

    lo, hi = max(at_least, 1), max(at_least, 1)
    while not ok(hi):  # grow geometrically, then bisect: the wait falls monotonically in the servers
        lo, hi = hi + 1, hi * 2
        if hi > 1_000_000:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi
