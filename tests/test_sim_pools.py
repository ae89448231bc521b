"""LLM pools: step times are the cost model's, continuous batching admits newcomers at step boundaries,
prefill batches respect their token budget, and the fitted service times equal the cost model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import decode_step, prefill
from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import LlmPool, Seq
from terrazzo.sim.service_times import LlmCost


@pytest.fixture(scope="module")
def cost(catalog) -> LlmCost:
    return LlmCost(deployment(catalog, "llama-3-70b", "b200", "fp16", 2, 1))


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 300), context=st.floats(1, 32_000))
def test_fitted_decode_step_is_the_cost_model(cost, batch, context):
    assert cost.decode_step_s(batch, context) == pytest.approx(decode_step(cost.dep, batch, context).latency_s,
                                                               rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(isl=st.integers(1, 8192), n=st.integers(1, 16))
def test_fitted_prefill_is_the_cost_model(cost, isl, n):
    assert cost.prefill_s(isl * n, isl * isl * n) == pytest.approx(prefill(cost.dep, isl, n).latency_s, rel=1e-9)


def test_moe_prefill_falls_back_to_the_cost_model(catalog):
    moe = LlmCost(deployment(catalog, "mixtral-8x7b", "b200", "bf16", 1, 1))
    assert moe._prefill is None  # experts touched grow with tokens: not affine, so no fit
    assert moe.prefill_s(1000, 1000**2) == pytest.approx(prefill(moe.dep, 1000, 1).latency_s)


def _pool(env, cost, mode, batch=8, budget=8192.0, pp=1):
    return LlmPool(env, "p", mode, cost, 1, pp, batch, budget, cost.kv_capacity_tokens(batch))


def test_a_lone_decode_takes_the_sum_of_its_steps(cost):
    env = Environment()
    pool = _pool(env, cost, "decode")
    done = []
    seq = Seq(512, 200, lambda s, lane: done.append(env.now), None, 0.0)
    pool.submit(seq)
    env.run()
    # 199 steps after the first token, contexts 513 … 711; one span, timed at its mean context
    expected = sum(decode_step(cost.dep, 1, 513 + i).latency_s for i in range(199))
    assert done == [pytest.approx(expected, rel=1e-6)]
    assert env.events <= 3  # one event for the whole span, not one per token


def test_a_newcomer_joins_at_the_next_step_boundary(cost):
    env = Environment()
    pool = _pool(env, cost, "decode")
    finished: dict[str, float] = {}
    a = Seq(512, 100, lambda s, lane: finished.__setitem__("a", env.now), None, 0.0)
    b = Seq(512, 50, lambda s, lane: finished.__setitem__("b", env.now), None, 0.0)
    pool.submit(a)
    step1 = cost.decode_step_s(1, 513 + 49)  # a's span: 99 steps at its mean context
    env.at(10.5 * step1, lambda _: pool.submit(b))
    env.run()
    assert b.t_admit == pytest.approx(11 * step1, rel=1e-9)  # the boundary after 10.5 steps
    # then both decode together: b needs 49 steps, a has 99 − 11 = 88 left
    assert finished["b"] < finished["a"]
    assert pool.lanes[0].n == 0 and pool.lanes[0].kv_used == 0 and pool.load.sum() == 0


def test_decode_batch_never_exceeds_its_limit(cost):
    env = Environment()
    pool = _pool(env, cost, "decode", batch=4)
    peak = []
    for i in range(20):
        env.at(i * 0.001, lambda _: (pool.submit(Seq(256, 64, lambda s, lane: None, None, env.now)),
                                    peak.append(pool.lanes[0].n)))
    env.run()
    assert max(peak) <= 4
    waits = list(pool.visits.wait_s)
    assert len(waits) == 20 and max(waits) > 0  # later ones queued for a slot


def test_prefill_batches_respect_count_and_token_budget(cost):
    env = Environment()
    pool = _pool(env, cost, "prefill", batch=4, budget=1500.0)
    firsts = []
    for isl in (1000, 400, 300, 200, 100, 50):
        pool.submit(Seq(isl, 10, lambda s, lane: firsts.append((s.isl, env.now)), None, 0.0))
    env.run()
    # the first prompt starts alone (the pool was idle); then 400+300+200+100 (≤ 4 prompts, ≤ 1500 tokens); then 50
    t1 = cost.prefill_s(1000, 1000**2)
    t2 = t1 + cost.prefill_s(1000, 400**2 + 300**2 + 200**2 + 100**2)
    t3 = t2 + cost.prefill_s(50, 50**2)
    assert [t for _, t in firsts] == pytest.approx([t1, t2, t2, t2, t2, t3])


def test_aggregated_prefill_stalls_running_decodes(cost):
    env = Environment()
    pool = _pool(env, cost, "aggregated")
    done: dict[str, float] = {}
    a = Seq(512, 100, lambda s, lane: done.__setitem__("a", env.now), None, 0.0)
    pool.submit(a)
    env.run()
    alone = done["a"]
    env2 = Environment()
    pool2 = _pool(env2, cost, "aggregated")
    a2 = Seq(512, 100, lambda s, lane: done.__setitem__("a2", env2.now), None, 0.0)
    pool2.submit(a2)
    env2.at(0.5, lambda _: pool2.submit(Seq(4000, 2, lambda s, lane: None, None, env2.now)))
    env2.run()
    assert a.t_first == pytest.approx(cost.prefill_s(512, 512**2))
    assert done["a2"] > alone + cost.prefill_s(4000, 4000**2) * 0.99  # a's decode waited for the newcomer's prefill


def test_pipeline_stages_are_lanes(catalog):
    cost = LlmCost(deployment(catalog, "llama-3-70b", "gaudi3", "fp16", 1, 2))
    env = Environment()
    pool = LlmPool(env, "p", "prefill", cost, 3, 2, 2, 1024, cost.kv_capacity_tokens(2))
    assert pool.capacity == 6
