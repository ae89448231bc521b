"""Engine schedulers (terrazzo/sim/schedulers.py): chunked prefill keeps decodes running and keeps every
iteration within its token budget and sequence cap; paged KV preempts, recomputes and still finishes
every request; the block arithmetic matches a brute-force count; and an LLM lane that runs one sequence
at a time is an M/D/1 queue under every scheduler (Pollaczek–Khinchine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sim_queueing import batch_ci

from terrazzo.cost.candidates import deployment
from terrazzo.errors import SimError
from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import LlmPool, Seq
from terrazzo.sim.sampling import stream
from terrazzo.sim.schedulers import (
    CHUNKED,
    INFLIGHT,
    PAGED,
    PREFILL_FIRST,
    RESERVE,
    BlockManager,
    Lane,
    Scheduler,
)
from terrazzo.sim.service_times import LlmCost
from terrazzo.sim.sim_inputs import scheduler_of

ALL = [(p, k) for p in (PREFILL_FIRST, CHUNKED, INFLIGHT) for k in (RESERVE, PAGED)]


@pytest.fixture(scope="module")
def cost(catalog) -> LlmCost:
    return LlmCost(deployment(catalog, "llama-3-70b", "b200", "fp16", 2, 1))


class Recorder:
    """The cost model, recording every iteration's work (decode batch, prefill tokens)."""

    def __init__(self, cost: LlmCost) -> None:
        self.cost, self.iterations = cost, []
        self.lane: Lane | None = None  # when set, every iteration's KV must fit its blocks

    def _check(self) -> None:
        if self.lane is not None:
            b = self.lane.blocks
            assert b.fixed + b.decode_blocks(self.lane.steps) <= b.total

    def prefill_s(self, tokens, sum_sq):
        self._check()
        self.iterations.append((0, tokens))
        return self.cost.prefill_s(tokens, sum_sq)

    def decode_step_s(self, batch, context):
        self._check()
        self.iterations.append((batch, 0))
        return self.cost.decode_step_s(batch, context)

    def context_read_s(self, cached_tokens, pairs):
        return self.cost.context_read_s(cached_tokens, pairs)

    def mixed_step_s(self, batch, context, tokens, sum_sq):
        self._check()
        self.iterations.append((batch, tokens))
        return self.cost.mixed_step_s(batch, context, tokens, sum_sq)


def _pool(env, cost, sched, mode="aggregated", kv_tokens=1e9):
    return LlmPool(env, "p", mode, cost, 1, 1, sched.max_num_seqs, sched.max_batched_tokens, kv_tokens, sched)


def test_mixed_step_is_the_decode_step_or_the_prefill_at_the_ends(cost):
    assert cost.mixed_step_s(8, 900, 0, 0) == cost.decode_step_s(8, 900)
    assert cost.mixed_step_s(0, 0, 512, 512**2) == cost.prefill_s(512, 512**2)
    both = cost.mixed_step_s(8, 900, 504, 504**2)
    assert max(cost.decode_step_s(8, 900), cost.prefill_s(504, 504**2)) <= both
    assert both < cost.decode_step_s(8, 900) + cost.prefill_s(504, 504**2)  # the weights stream once


def _prompt_beside_a_decode(cost, sched) -> tuple[Recorder, Seq]:
    """A 2,000-token prompt arriving while a 256-token one decodes: the iterations and the prompt."""
    env = Environment()
    rec = Recorder(cost)
    pool = _pool(env, rec, sched)
    pool.submit(Seq(256, 400, lambda s, lane: None, None, 0.0))
    b = Seq(2000, 4, lambda s, lane: None, None, 0.0)
    env.at(0.05, lambda _: pool.submit(b))
    env.run()
    return rec, b


def test_chunked_prefill_does_not_stall_running_decodes(cost):
    rec, b = _prompt_beside_a_decode(cost, Scheduler(policy=CHUNKED, kv=PAGED, max_num_seqs=8,
                                                     max_batched_tokens=512))
    # b's prompt goes in chunks of 511 tokens beside a's decode (1 token): 511, 511, 511, 467
    chunks = [t for n, t in rec.iterations if n == 1 and t > 0]
    assert chunks == [511, 511, 511, 467]
    assert all(n + t <= 512 for n, t in rec.iterations)
    # a produced a token in every iteration while b prefilled: its decode never waited for a whole prompt
    # (each chunk priced with its attention over the prompt so far, as the scheduler prices it)
    done, expected_s = 0, 0.0
    for t in chunks:
        expected_s += cost.mixed_step_s(1, 256, t, t * t + 2 * t * done)
        done += t
    assert b.t_first - b.t_admit == pytest.approx(expected_s, rel=0.05)


def test_prefill_first_stalls_decodes_for_a_whole_prompt(cost):
    sched = Scheduler(policy=PREFILL_FIRST, kv=RESERVE, max_num_seqs=8, max_batched_tokens=8192)
    env = Environment()
    rec = Recorder(cost)
    pool = _pool(env, rec, sched)
    pool.submit(Seq(256, 400, lambda s, lane: None, None, 0.0))
    env.at(0.05, lambda _: pool.submit(Seq(2000, 4, lambda s, lane: None, None, env.now)))
    env.run()
    assert (0, 2000) in rec.iterations  # the whole prompt in one prefill-only iteration


@pytest.mark.parametrize("kv", [RESERVE, PAGED])
def test_inflight_batching_runs_a_whole_prompt_beside_the_decodes(cost, kv):
    rec, b = _prompt_beside_a_decode(cost, Scheduler(policy=INFLIGHT, kv=kv, max_num_seqs=8,
                                                     max_batched_tokens=8192))
    assert (1, 2000) in rec.iterations and (0, 2000) not in rec.iterations  # one pass, a's decode in it
    assert b.t_first - b.t_admit == pytest.approx(cost.mixed_step_s(1, 256, 2000, 2000**2), rel=0.05)


def test_inflight_holds_a_prompt_the_decodes_leave_no_room_for(cost):
    """Budget 1,024: with 8 decodes running a 1,020-token prompt waits until at most 4 are left."""
    sched = Scheduler(policy=INFLIGHT, kv=RESERVE, max_num_seqs=16, max_batched_tokens=1024)
    env = Environment()
    rec = Recorder(cost)
    pool = _pool(env, rec, sched)
    for i in range(8):
        pool.submit(Seq(64, 20 + 10 * i, lambda s, lane: None, None, 0.0))
    late = Seq(1020, 4, lambda s, lane: None, None, 0.0)
    env.at(0.02, lambda _: pool.submit(late))
    env.run()
    assert all(n + t <= 1024 for n, t in rec.iterations)
    (alongside,) = [n for n, t in rec.iterations if t == 1020]
    assert alongside == 4  # it ran as soon as the decodes left it room, and none of them stalled for it


def test_tensorrt_llm_pools_default_to_inflight_batching():
    s = scheduler_of({"name": "op", "engine": "trtllm", "engine_version": "1.0"}, None, 64)
    assert (s.policy, s.kv, s.max_num_seqs) == (INFLIGHT, RESERVE, 64)


@pytest.mark.parametrize("policy", [PREFILL_FIRST, CHUNKED, INFLIGHT])
def test_iterations_respect_the_budget_and_the_sequence_cap(cost, policy):
    sched = Scheduler(policy=policy, kv=PAGED, max_num_seqs=6, max_batched_tokens=1024)
    env = Environment()
    rec = Recorder(cost)
    pool = _pool(env, rec, sched)
    rng = np.random.default_rng(1)
    peak = []
    for i in range(60):
        isl, osl = int(rng.integers(50, 900)), int(rng.integers(2, 60))
        env.at(i * 0.01, lambda _, a=isl, b=osl: pool.submit(Seq(a, b, lambda s, lane: None, None, env.now)))
        env.at(i * 0.01 + 0.005, lambda _: peak.append(pool.lanes[0].n + len(pool.lanes[0].prefilling)))
    env.run()
    assert max(peak) <= 6 and all(n <= 6 for n, _ in rec.iterations)
    if policy in (CHUNKED, INFLIGHT):  # decodes count in the budget (every prompt here is under it)
        assert all(n + t <= 1024 for n, t in rec.iterations)
    else:  # whole prompts; a batch of several stays within the budget
        assert all(t <= 1024 for n, t in rec.iterations if n == 0)


@pytest.mark.parametrize("policy", [PREFILL_FIRST, CHUNKED, INFLIGHT])
def test_too_few_kv_blocks_preempt_recompute_and_finish_every_request(cost, policy):
    sched = Scheduler(policy=policy, kv=PAGED, max_num_seqs=8, max_batched_tokens=512, block_size=16, kv_blocks=48)
    env = Environment()
    rec = Recorder(cost)
    pool = _pool(env, rec, sched)
    lane: Lane = pool.lanes[0]
    done: list[Seq] = []
    seqs = [Seq(100 + 7 * i, 200 + 11 * i, lambda s, r: done.append(s), i, 0.0) for i in range(20)]
    rec.lane = lane
    for s in seqs:
        pool.submit(s)
    env.run()
    assert len(done) == 20 and all(s.out == s.osl for s in done)
    assert pool.preemptions() > 0 and sum(s.preemptions for s in seqs) == pool.preemptions()
    assert lane.blocks.fixed == 0 and lane.blocks.n == 0 and lane.in_system() == 0
    prefilled = sum(t for _, t in rec.iterations)
    assert prefilled > sum(s.isl for s in seqs)  # preempted sequences recomputed their tokens
    preempted = [s for s in seqs if s.preemptions]
    assert all(s.t_first < s.t_done for s in preempted)


def test_a_sequence_larger_than_the_lane_is_refused(cost):
    sched = Scheduler(policy=CHUNKED, kv=PAGED, block_size=16, kv_blocks=10)
    pool = _pool(Environment(), cost, sched)
    with pytest.raises(ValueError, match="KV blocks"):
        pool.submit(Seq(150, 20, lambda s, r: None, None, 0.0))


@settings(max_examples=80, deadline=None)
@given(ctx=st.lists(st.integers(1, 3000), min_size=1, max_size=40), bs=st.sampled_from([1, 16, 128]),
       step=st.integers(0, 500), k=st.integers(1, 400), room=st.integers(0, 3000))
def test_block_arithmetic_matches_a_brute_force_count(ctx, bs, step, k, room):
    bm = BlockManager(room, bs)
    for c in ctx:
        bm.join(c)
    count = lambda s: sum(math.ceil((c + s) / bs) for c in ctx)  # noqa: E731
    assert bm.decode_blocks(step) == count(step)
    fit = bm.decode_steps_that_fit(step, k)
    assert fit == next((j for j in range(k) if count(step + j) > room), k)
    bm.leave(ctx[0])
    assert bm.decode_blocks(step) == count(step) - math.ceil((ctx[0] + step) / bs)


@pytest.mark.parametrize(("policy", "kv"), ALL)
def test_one_sequence_at_a_time_is_md1_under_every_scheduler(cost, policy, kv):
    """Fixed prompt and answer, one sequence at a time: deterministic service, Poisson arrivals."""
    sched = Scheduler(policy=policy, kv=kv, max_num_seqs=1, max_batched_tokens=512)
    env = Environment()
    pool = _pool(env, cost, sched)
    probe = Environment()
    one = _pool(probe, cost, sched)
    s0 = Seq(1200, 40, lambda s, r: None, None, 0.0)
    one.submit(s0)
    probe.run()
    service_s = s0.t_done
    lam, n = 0.7 / service_s, 25_000
    gaps = stream(3, f"md1-{policy}-{kv}").exponential(1 / lam, n)
    seqs = []
    t = 0.0
    for gap in gaps:
        t += gap
        s = Seq(1200, 40, lambda s, r: None, None, t)
        seqs.append(s)
        env.at(t, lambda _, s=s: pool.submit(s))
    env.run()
    waits = np.array([s.t_admit - s.t_call for s in seqs])
    rho = lam * service_s
    expected = rho * service_s / (2 * (1 - rho))
    mean, half = batch_ci(waits)
    assert abs(mean - expected) <= half, f"{policy}/{kv}: wait {mean:.4f} ± {half:.4f}, theory {expected:.4f}"
    assert all(s.t_done - s.t_admit == pytest.approx(service_s, rel=1e-9) for s in seqs[:100])


# the plan names each pool's engine and scheduler ---------------------------------------------------

def test_a_plan_without_scheduler_fields_keeps_the_policy_it_was_priced_with():
    s = scheduler_of({"name": "think.aggregated", "batch": 48}, None, 48)
    assert (s.policy, s.kv, s.max_num_seqs, s.max_batched_tokens, s.engine) == (PREFILL_FIRST, RESERVE, 48, 8192, None)


def test_a_named_engine_brings_its_scheduler_and_fields_override_it():
    s = scheduler_of({"name": "op", "engine": "vllm", "engine_version": "0.32.0"}, None, 64)
    assert (s.policy, s.kv, s.block_size, s.max_num_seqs) == (CHUNKED, PAGED, 16, 64)
    assert str(s.engine) == "vllm-0.32.0"
    pool = {"name": "p0", "engine": "vllm", "scheduler": {"max_batched_tokens": 512, "block_size": 128,
                                                           "kv_blocks": 2048}}
    s = scheduler_of({"name": "op", "pool": "p0"}, pool, 32)
    assert (s.max_batched_tokens, s.block_size, s.kv_blocks) == (512, 128, 2048)
    assert scheduler_of({"name": "op", "engine": "vllm", "scheduler": "prefill-first"}, None, 8).policy == PREFILL_FIRST


@pytest.mark.parametrize(("rec", "match"), [
    ({"engine": "vllmm"}, "field 'engine'.*use one of"),
    ({"scheduler": {"chunk": 512}}, "unknown field 'scheduler.chunk'"),
    ({"scheduler": "sarathi"}, "scheduler.policy.*use one of"),
    ({"scheduler": {"kv": "swap"}}, "scheduler.kv"),
    ({"scheduler": {"block_size": "big"}}, "whole numbers"),
    ({"scheduler": {"kv_blocks": 0}}, "kv_blocks must be at least 1"),
])
def test_bad_scheduler_fields_say_which_and_how_to_fix(rec, match):
    with pytest.raises(SimError, match=match):
        scheduler_of({"name": "op", **rec}, None, 8)


def test_a_v2_style_plan_with_vllm_pools_simulates_under_the_chunked_scheduler():
    from test_sim_plan import INPUTS

    from terrazzo.sim.results import simulate
    from terrazzo.sim.sim_inputs import model_from_plan
    from terrazzo.sim.simulation import SimConfig
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
    from terrazzo.verify.replan import verified_plan

    cluster, cat = load_cluster(INPUTS["cluster"])
    agent = load_agent(INPUTS["agent"], cat)
    doc = verified_plan(agent, load_workload(INPUTS["workload"], agent), load_sla(INPUTS["sla"], agent), cluster,
                        cat).to_json()
    doc["inputs"] = {k: str(v) for k, v in INPUTS.items()}
    for op in doc["ops"]:
        if op["kind"].startswith("llm."):
            op.update(engine="vllm", engine_version="0.32.0")
    model = model_from_plan(doc)
    llm = [o for o in model.ops.values() if o.kind.startswith("llm.")]
    assert llm and all(o.scheduler.policy == CHUNKED and o.scheduler.kv == PAGED for o in llm)
    report = simulate(model, SimConfig(duration_s=120, seed=3))
    assert report.unfinished == 0 and report.e2e.p50_s > 0


def test_the_vidur_stream_has_the_splitwise_conversation_statistics():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import vidur_scenario as V

    stream = V.stream(V.Scenario(requests=10_000))
    isl, osl = np.array([r[1] for r in stream]), np.array([r[2] for r in stream])
    assert abs(np.median(isl) / 1020 - 1) < 0.05 and abs(np.median(osl) / 129 - 1) < 0.05
    assert (isl + osl).max() <= 4096 and isl.min() >= 1 and osl.min() >= 1
    gaps = np.diff([r[0] for r in stream])
    # Poisson at 2 requests/s with Vidur's cap of three mean gaps: mean (1 - e^-3) / 2
    assert gaps.max() <= 1.5 + 1e-9 and abs(gaps.mean() / ((1 - np.exp(-3)) / 2) - 1) < 0.03


def test_on_the_vidur_scenario_chunking_trades_first_token_for_steady_decodes():
    """Chunked prefill (Sarathi, vLLM V1) against whole prompts first, on the same 3,000 requests."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import vidur_scenario as V

    s = V.Scenario(requests=3000)
    stream, llm = V.stream(s), V.cost()
    runs = {name: V.run(s, sched, stream, llm) for name, sched in V.schedulers(s).items()}
    chunked, previous = runs["chunked"], runs["prefill-first (previous)"]
    assert np.median(chunked.ttft_s) > np.median(previous.ttft_s)  # prompts share iterations with decodes
    assert np.nanpercentile(chunked.tbt_s, 99) < np.nanpercentile(previous.tbt_s, 99)  # no whole-prompt stalls
    assert chunked.preemptions == 0 and len(chunked.e2e_s) == 3000
