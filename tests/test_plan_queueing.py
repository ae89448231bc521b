"""First-token queues: the closed forms the planner sizes replicas with, checked against exact M/M/c
results and against the simulator's own queue; and the planner using them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from terrazzo.cost.tco import HourlyCost
from terrazzo.plan.check import Assignment, check, first_token_tail_s, min_replicas
from terrazzo.plan.fleet_model import Share, pool_key
from terrazzo.plan.milp import solve_milp
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp
from terrazzo.plan.queueing import erlang_c, servers_for, wait_quantile_s
from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import ServerPool


def test_erlang_c_matches_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = ρ
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # textbook M/M/2 at a = 1
    assert erlang_c(3, 0.0) == 0.0 and erlang_c(3, 3.0) == 1.0
    assert erlang_c(1000, 900.0) < erlang_c(1000, 990.0) < 1  # the recursion holds for big pools


def test_mm1_wait_quantile_is_exact():
    lam, mu = 8.0, 10.0  # P(W > t) = ρ·exp(−(μ − λ)t) → t_p = ln(ρ / (1 − p)) / (μ − λ)
    assert wait_quantile_s(1, lam, 1 / mu, 1.0, 1.0, 99) == pytest.approx(math.log(0.8 / 0.01) / 2)
    assert wait_quantile_s(1, 0.05, 1 / mu, 1.0, 1.0, 99) == 0.0  # under 1 % of arrivals wait at all
    assert wait_quantile_s(1, 12.0, 1 / mu, 1.0, 1.0, 99) == math.inf
    # deterministic service (c_s² = 0) halves the Poisson-exponential wait
    assert wait_quantile_s(1, lam, 1 / mu, 1.0, 0.0, 99) == pytest.approx(math.log(0.8 / 0.01) / 4)


def test_the_mmc_p99_wait_agrees_with_the_simulators_queue():
    """3 servers, exponential service 100 ms, 24 arrivals/s (ρ = 0.8), 200k customers."""
    rng = np.random.default_rng(5)
    env = Environment()
    pool = ServerPool(env, "q", replicas=3, per_replica=1)
    times = np.cumsum(rng.exponential(1 / 24, 200_000))
    for t, service in zip(times, rng.exponential(0.1, 200_000), strict=True):
        env.at(float(t), lambda s: pool.submit(s, 0.0, lambda *_: None, None), float(service))
    env.run()
    waits = np.asarray(pool.visits.wait_s)[10_000:]
    predicted = wait_quantile_s(3, 24.0, 0.1, 1.0, 1.0, 99)
    assert np.percentile(waits, 99) == pytest.approx(predicted, rel=0.08)


def test_servers_for_is_the_fewest_that_meet_the_limit():
    n = servers_for(20.0, 0.1, 0.13, 1.0, 0.0, 99, 0.25, 1)
    assert n is not None and n >= 3
    ok = [0.13 + wait_quantile_s(k, 20.0, 0.1, 1.0, 0.0, 99) <= 0.25 for k in (n - 1, n)]
    assert ok == [False, True]
    assert servers_for(20.0, 0.1, 0.3, 1.0, 0.0, 99, 0.25, 1) is None  # the p99 prompt alone misses


def _graph(limit_s: float | None, arrival_scv: float = 1.0) -> PlanningGraph:
    cost = HourlyCost("gpu", 2.0, 0.5, 0.0)
    pre = PlanOp("n.prefill", "llm.prefill", "n", 1.0,
                 (OpCandidate("gpu", 1, 1, 1, 0.15, 1 / 0.15, 1, 2.0, first_token_s=0.15),),
                 first_token_limit_s=limit_s, work_tail_ratio=1.3, work_scv=0.04, arrival_scv=arrival_scv)
    return PlanningGraph((pre,), (), (), 20.0, None, 0.8, math.inf, {"gpu": cost}, {"gpu": 50e9}, 5e-6, ("gpu",))


def test_first_token_ops_get_replicas_for_the_percentile_not_just_the_throughput():
    loose, tight = _graph(None), _graph(0.25)
    cand = tight.op("n.prefill").candidates[0]
    by_throughput = min_replicas(loose, "n.prefill", cand)
    assert by_throughput == math.ceil(20 * 0.15 / 0.8)
    sized = min_replicas(tight, "n.prefill", cand)
    assert sized > by_throughput
    assert first_token_tail_s(tight, "n.prefill", cand, sized) <= 0.25
    assert first_token_tail_s(tight, "n.prefill", cand, sized - 1) > 0.25
    pool = pool_key(tight.op("n.prefill"), cand).name
    v = check(tight, Assignment({"n.prefill": (Share(0),)}, {pool: by_throughput}))
    assert not v.ok and "p99 TTFT" in " ".join(v.violations)
    a = solve_milp(tight).assignment
    assert a.placements["n.prefill"] == (Share(0, 1.0),)
    assert check(tight, a).pools[pool].replicas == sized


def test_bursty_arrivals_need_more_replicas():
    cand = _graph(0.25).op("n.prefill").candidates[0]
    assert min_replicas(_graph(0.25, 3.0), "n.prefill", cand) > min_replicas(_graph(0.25), "n.prefill", cand)
