"""Arrival clumps: the queue model's wait behind one's own clump against the simulator's queue, a
first-token pool replayed alone on its recorded arrivals against the whole simulation (the same
requests give the same TTFTs), and the clump a re-plan takes from a replay."""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.plan.fleet_model import dedicated_replicas, pool_key
from terrazzo.plan.from_ir import build
from terrazzo.plan.queueing import clump_wait_s, wait_quantile_s
from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import LlmPool, ServerPool
from terrazzo.sim.sim_inputs import model_from_specs
from terrazzo.sim.simulation import SimConfig, Simulation
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.feedback import _shape, check_window
from terrazzo.verify.queue_replay import PoolShape, effective_clump, replayed_ttft_s, replicas_needed
from terrazzo.verify.replan import verified_plan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_plan import DEVICES, agent_with_ops


def test_one_request_at_a_time_waits_for_no_clump():
    assert clump_wait_s(1.0, 4, 0.1, 99) == 0.0
    # size-biased mean 3 → q = 1/2: 99 % of requests have at most log2(100) = 6.6 ahead, served 2 at a time
    assert clump_wait_s(3.0, 2, 0.1, 99) == pytest.approx(np.log2(100) / 2 * 0.1)
    assert clump_wait_s(9.0, 2, 0.1, 99) > clump_wait_s(3.0, 2, 0.1, 99) > clump_wait_s(3.0, 4, 0.1, 99)


@pytest.mark.parametrize(("mean", "servers", "service_s", "clumps_per_s"),
                         [(4.0, 2, 0.05, 1.0), (10.0, 3, 0.02, 2.0), (2.0, 1, 0.05, 2.0), (20.0, 4, 0.01, 1.0)])
def test_the_clump_wait_agrees_with_the_simulators_queue_at_low_load(mean, servers, service_s, clumps_per_s):
    """Poisson clumps of geometric size into a FIFO pool at 5–20 % utilisation: the p99 wait (the Poisson
    queue plus the wait behind one's clump) within 12 % of the simulated one. Between clumps the queue
    is still Poisson-scaled, so at 30–50 % utilisation the model reads 20–40 % low; the re-plan takes
    its clump from a replay of the measured arrivals (effective_clump), not from this closed form."""
    rng = np.random.default_rng(1)
    env = Environment()
    pool = ServerPool(env, "q", servers, 1)
    n = 20_000
    for t, k in zip(np.cumsum(rng.exponential(1 / clumps_per_s, n)), rng.geometric(1 / mean, n), strict=True):
        for _ in range(int(k)):
            env.at(float(t), lambda _: pool.submit(service_s, 0.0, lambda *_: None, None), None)
    env.run()
    simulated = float(np.percentile(np.asarray(pool.visits.wait_s), 99))
    size_biased = 2 * mean - 1  # of a geometric clump size with this mean
    rate = clumps_per_s * mean
    predicted = (wait_quantile_s(servers, rate, service_s, 1.0, 0.0, 99)
                 + clump_wait_s(size_biased, servers, service_s, 99))
    assert predicted == pytest.approx(simulated, rel=0.12)


@cache
def _checked(n_ops: int = 30):
    """A generated chain (aggregated and disaggregated LLM calls behind batched pools) planned and run
    through the planner's check simulation."""
    cat = load_catalog()
    cluster = Cluster(devices=DEVICES)
    w = Workload.model_validate({"arrival": {"rate_per_s": 20}})
    sla = Sla.model_validate({"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}})
    agent = agent_with_ops(n_ops)
    plan = verified_plan(agent, w, sla, cluster, cat, verify=False)
    graph = build(agent, w, sla, cluster, cat)
    pj = plan.to_json()
    model = replace(model_from_specs(pj, agent, w, sla, cluster, cat, "t"),
                    edge_bytes={(e.src, e.dst): e.data_bytes for e in graph.edges})
    duration, drain = check_window(pj, 20.0)
    config = SimConfig(duration_s=duration, seed=0, drain_s=drain, record_arrivals=True)
    return graph, Simulation(model, config).run(), config


def test_a_first_token_pool_replayed_alone_gives_the_simulations_ttfts():
    _, sim, _ = _checked()
    modes = set()
    for st in sim.llm_stages:
        op = st.agg or st.pre
        assert isinstance(op.pool, LlmPool)
        replayed = replayed_ttft_s(op.pool, op.pool.replicas)
        simulated = np.frombuffer(st.calls["ttft_s"], dtype=np.float64)
        assert replayed.size == simulated.size > 100
        np.testing.assert_allclose(np.sort(replayed), np.sort(simulated), rtol=1e-9, atol=1e-12)
        modes.add(op.pool.mode)
    assert modes == {"prefill", "aggregated"}


def test_the_replicas_a_replay_needs_are_the_fewest_that_meet_the_limit():
    graph, sim, config = _checked()
    st = max(sim.llm_stages, key=lambda s: float(np.percentile(np.frombuffer(s.calls["ttft_s"]), 99)))
    op = st.agg or st.pre
    pool = op.pool
    assert pool.arrivals is not None
    submit = np.asarray(pool.arrivals.submit_s)

    def p99(r: int) -> float:
        return float(np.percentile(replayed_ttft_s(pool, r)[submit >= config.warmup], 99))

    for limit in (0.5, p99(pool.replicas) / 2):  # the SLA's, and one the planned replicas miss
        need = replicas_needed(pool, limit, 99, config.warmup, 64)
        assert need is not None
        assert p99(need) <= limit and (need == pool.replicas or p99(need - 1) > limit)
    assert need > pool.replicas  # the clump that makes the planner's model ask for as many
    o = graph.op(op.name)
    cand = next(c for c in o.candidates if pool_key(o, c).name == op.planned.pool)
    clump = effective_clump(graph, op.name, cand, 1.0, need)
    assert dedicated_replicas(_with_clump(graph, op.name, clump), op.name, cand) >= need
    assert dedicated_replicas(_with_clump(graph, op.name, clump * 0.99), op.name, cand) < need


def _with_clump(graph, name, clump):
    return replace(graph, ops=tuple(replace(o, arrival_clump=clump) if o.name == name else o for o in graph.ops))


def test_the_search_from_a_guess_finds_the_same_fewest_replicas():
    """replicas_needed from any starting guess (above or below the answer) gives the answer without one."""
    _, sim, config = _checked()
    st = max(sim.llm_stages, key=lambda s: float(np.percentile(np.frombuffer(s.calls["ttft_s"]), 99)))
    pool = (st.agg or st.pre).pool
    shape = PoolShape.of(pool)
    submit = np.asarray(pool.arrivals.submit_s)
    limit = float(np.percentile(replayed_ttft_s(pool, 1)[submit >= config.warmup], 99)) / 2  # one is too few
    base = replicas_needed(pool, limit, 99, config.warmup, 64, shape)
    assert base is not None and base > 1
    for guess in (1, base - 1, base, base + 1, 3 * base):
        assert replicas_needed(pool, limit, 99, config.warmup, 64, shape, guess) == base


def test_a_candidate_rebuilt_from_the_plan_replays_as_its_own_pool():
    """feedback._shape builds a candidate's pool as the simulator does: for the candidate the plan chose it
    gives the same TTFTs as the pool itself (so the replays of other candidates use the same construction)."""
    graph, sim, _ = _checked()
    for st in sim.llm_stages:
        op = st.agg or st.pre
        o = graph.op(op.name)
        cand = next(c for c in o.candidates if pool_key(o, c).name == op.planned.pool)
        own = replayed_ttft_s(op.pool, op.pool.replicas)
        rebuilt = replayed_ttft_s(op.pool, op.pool.replicas, _shape(sim, st, op.pool, cand))
        np.testing.assert_array_equal(own, rebuilt)
