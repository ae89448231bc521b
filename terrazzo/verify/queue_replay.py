"""A first-token pool replayed alone on the arrivals its check simulation recorded, to find how many
replicas those arrivals need, and the burstiness that makes the planner's queue model agree.

Why: behind a batched LLM pool the arrivals come in clumps on several time scales (sequences admitted
between two decode steps of a prefill-first aggregated replica all finish in the same step, and a
FIFO pool behind turns a clump into a train), which no single squared CV of the gaps summarises; for
an aggregated pool, whose modelled servers are its decode slots, no SCV moves the modelled wait at
all. The arrival stream itself is exact, though: in a
feed-forward agent a pool's size does not change what reaches it, so replaying the recorded stream
through the same pool code at r replicas gives the TTFTs the simulation would give at r replicas,
other pools unchanged. The re-plan then sizes the node's first-token ops with the arrival clump at
which the planner's queue model (plan/queueing.py) needs as many replicas as the replay does
(`effective_clump`), so the other candidates of the node — other devices, the other serving variant —
are sized for the same arrivals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from terrazzo.plan.fleet_model import TOLERANCE, clump_service, first_token_service_s, load_of, throughput_replicas
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph
from terrazzo.plan.queueing import servers_for
from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import LlmPool, Seq
from terrazzo.sim.schedulers import IterationCost, Scheduler

MAX_CLUMP = 1e4  # the largest arrival clump a re-plan assigns


@dataclass(frozen=True)
class PoolShape:
    """What an LLM pool is, but for its replica count: a pool of the plan, or a candidate the plan could
    take instead, replayed on the same arrivals."""

    name: str
    mode: str
    cost: IterationCost
    pp: int
    max_batch: int
    token_budget: float
    kv_tokens: float
    sched: Scheduler

    @classmethod
    def of(cls, pool: LlmPool) -> PoolShape:
        return cls(pool.name, pool.mode, pool.cost, pool.pp, pool.max_batch, pool.token_budget, pool.kv_tokens,
                   pool.sched)

    def build(self, env: Environment, replicas: int) -> LlmPool:
        return LlmPool(env, self.name, self.mode, self.cost, replicas, self.pp, self.max_batch, self.token_budget,
                       self.kv_tokens, self.sched)


def replayed_ttft_s(pool: LlmPool, replicas: int, shape: PoolShape | None = None) -> np.ndarray:
    """Each recorded arrival's time to first token (submit to first token) on `replicas` replicas of
    `pool` (or of `shape`, on `pool`'s arrivals), in arrival order, on a fresh clock: the same lanes,
    scheduler and cost as in the run."""
    env = Environment()
    twin = (shape or PoolShape.of(pool)).build(env, replicas)
    a = pool.arrivals
    if a is None:
        raise ValueError(f"pool {pool.name} did not record its arrivals (SimConfig.record_arrivals)")
    n = len(a.submit_s)
    first = np.full(n, math.nan)

    def done(seq: Seq, _lane: int) -> None:
        first[seq.arg] = seq.t_first - seq.t_submit

    def arrive(i: int) -> None:
        seq = Seq(int(a.isl[i]), int(a.osl[i]), done, i, env.now)
        seq.done = int(a.cached[i])
        twin.submit(seq)

    for i in range(n):
        env.at(a.submit_s[i], arrive, i)
    env.run()
    return first


def _tail_s(ttft: np.ndarray, percentile: float, warm_from_s: float, submit_s: np.ndarray) -> float:
    kept = ttft[submit_s >= warm_from_s]
    if kept.size == 0:
        return 0.0
    return float(np.percentile(np.where(np.isnan(kept), np.inf, kept), percentile))


def replicas_needed(pool: LlmPool, limit_s: float, percentile: float, warm_from_s: float,
                    at_most: int, shape: PoolShape | None = None, start: int | None = None) -> int | None:
    """Fewest replicas (at least the pool's own; with `shape`, at least one) whose replayed percentile TTFT
    is within `limit_s`, over arrivals from `warm_from_s` on; None when even `at_most` miss it. `start`: a
    guess to search from (the answer is the same; only the number of replays changes)."""
    if pool.arrivals is None or pool.mode not in ("prefill", "aggregated") or pool.arrivals.routed:
        return None
    submit = np.asarray(pool.arrivals.submit_s)
    if submit.size == 0:
        return None

    def ok(r: int) -> bool:
        return _tail_s(replayed_ttft_s(pool, r, shape), percentile, warm_from_s, submit) <= limit_s

    least = pool.replicas if shape is None else 1
    hi = max(least, start or least)
    if ok(hi):  # a passing guess: probe 1, 2, 4 … below it until one misses, then bisect
        lo, step = least, 1
        while hi - step >= least:
            if not ok(hi - step):
                lo = hi - step + 1
                break
            hi -= step
            step *= 2
    else:  # grow geometrically, then bisect: the tail falls monotonically in the replicas
        lo, hi = hi + 1, hi * 2
        while not ok(hi):
            lo, hi = hi + 1, hi * 2
            if hi > at_most:
                return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi


def modelled_replicas(graph: PlanningGraph, op: str, c: OpCandidate, share: float, clump: float) -> int:
    """Replicas the planner's queue model (fleet_model.dedicated_replicas) gives `c` for `share` of `op`
    with arrivals in clumps of `clump`."""
    o = graph.op(op)
    floor = throughput_replicas(load_of(graph, op, c, share), graph.utilisation_cap)
    if o.first_token_limit_s is None or not math.isfinite(c.slot_s):
        return floor
    lanes, each_s = clump_service(o, c)
    n = servers_for(graph.rate_per_s * o.visits * share, c.slot_s, first_token_service_s(o, c), o.arrival_scv,
                    o.work_scv if o.hold_scv is None else o.hold_scv, graph.percentile,
                    o.first_token_limit_s * (1 + TOLERANCE), floor, c.slots, clump, lanes, each_s)
    return 1_000_000_000 if n is None else n


def effective_clump(graph: PlanningGraph, op: str, c: OpCandidate, share: float, replicas: int) -> float:
    """The arrival clump (plan/queueing.clump_wait_s) at which the planner's queue model
    (fleet_model.dedicated_replicas) sizes `c` at `replicas` replicas for `share` of `op`: the smallest
    that needs at least that many (at least the op's planned clump; MAX_CLUMP when even that needs fewer)."""
    o = graph.op(op)
    limit = o.first_token_limit_s
    lam = graph.rate_per_s * o.visits * share
    if limit is None or lam <= 0 or not math.isfinite(c.slot_s):
        return o.arrival_clump
    floor = throughput_replicas(load_of(graph, op, c, share), graph.utilisation_cap)
    hold_scv = o.work_scv if o.hold_scv is None else o.hold_scv
    lanes, each_s = clump_service(o, c)

    def need(clump: float) -> int:
        n = servers_for(lam, c.slot_s, first_token_service_s(o, c), o.arrival_scv, hold_scv, graph.percentile,
                        limit * (1 + TOLERANCE), floor, c.slots, clump, lanes, each_s)
        return 1_000_000_000 if n is None else n

    lo = hi = max(o.arrival_clump, 1.0)
    if need(lo) >= replicas:
        return lo
    while need(hi) < replicas:
        lo, hi = hi, hi * 2
        if hi > MAX_CLUMP:
            return MAX_CLUMP
    for _ in range(60):  # need() grows with the clump: bisect to the smallest that needs `replicas`
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if need(mid) >= replicas else (mid, hi)
        if hi - lo <= 1e-3 * hi:
            break
    return hi
