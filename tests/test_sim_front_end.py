"""The API-server stage in front of an LLM pool (terrazzo/sim/front_end.py), simulator only: a lone request
pays exactly its intake, latency and one step's streaming job; when the core's demand exceeds one core
it caps the pool's throughput at the core's and its backlog grows at (demand − 1) seconds per second,
the fluid limit of an overloaded single server; below that the engine, not the core, sets throughput."""

from __future__ import annotations

import numpy as np
import pytest

from terrazzo.cost.candidates import deployment
from terrazzo.sim.engine import Environment
from terrazzo.sim.front_end import FrontEnd, FrontEndCost, _Core
from terrazzo.sim.pool_replay import PoolRun, replay
from terrazzo.sim.pools import LlmPool
from terrazzo.sim.schedulers import CHUNKED, PAGED, Scheduler
from terrazzo.sim.service_times import LlmCost

SCHED = Scheduler(policy=CHUNKED, kv=PAGED, max_num_seqs=32, max_batched_tokens=2048, block_size=16)


@pytest.fixture(scope="module")
def cost(catalog) -> LlmCost:
    return LlmCost(deployment(catalog, "llama-3-8b", "h100", "fp16", 1, 1))


def _run(cost: LlmCost, requests, front: FrontEndCost | None, users: int | None = None
         ) -> tuple[PoolRun, FrontEnd | None]:
    env = Environment()
    pool = LlmPool(env, "p", "aggregated", cost, 1, 1, SCHED.max_num_seqs, SCHED.max_batched_tokens,
                   cost.kv_capacity_tokens(SCHED.max_num_seqs), SCHED)
    fe = FrontEnd(env, pool, front) if front is not None else None
    return replay(pool, requests, (), fe, users), fe


def test_periodic_jobs_in_closed_form_match_one_by_one():
    rng = np.random.default_rng(3)
    for _ in range(200):
        free, first, period = rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0.001, 0.1)
        m, work = int(rng.integers(1, 40)), rng.uniform(0, 0.2)
        a, b = _Core(), _Core()
        a.free_at = b.free_at = free
        last = a.periodic(first, period, m, work)
        for j in range(m):
            out = b.job(first + j * period, work)
        assert last == pytest.approx(out, rel=1e-12, abs=1e-12)


def test_a_lone_request_pays_its_intake_latency_and_one_streaming_job(cost):
    front = FrontEndCost(request_cpu_s=0.004, step_cpu_s=0.0005, token_cpu_s=0.0003, latency_s=0.02)
    requests = [(10.0 * i, 200, 20) for i in range(5)]  # far apart: nothing queues
    bare, _ = _run(cost, requests, None)
    fronted, _ = _run(cost, requests, front)
    on_path = front.request_cpu_s + front.latency_s + front.step_cpu_s + front.token_cpu_s
    assert fronted.ttft_s - bare.ttft_s == pytest.approx(np.full(5, on_path), abs=1e-9)
    assert fronted.e2e_s - bare.e2e_s == pytest.approx(np.full(5, on_path), abs=1e-9)
    assert fronted.tbt_s == pytest.approx(bare.tbt_s, abs=1e-9)


def test_an_overloaded_core_caps_throughput_and_its_backlog_grows(cost):
    osl, isl = 64, 128
    step = cost.decode_step_s(SCHED.max_num_seqs, isl + osl / 2)
    # each token costs the core twice what a full batch's step gives it: the core, not the engine, limits
    token_cpu = 2 * step / SCHED.max_num_seqs
    front = FrontEndCost(request_cpu_s=0.0, step_cpu_s=0.0, token_cpu_s=token_cpu)
    rng = np.random.default_rng(1)  # answers of mixed lengths: identical ones finish in lockstep waves
    reqs = [(0.0, isl, int(o)) for o in rng.integers(osl // 4, 7 * osl // 4, 400)]
    bare, _ = _run(cost, reqs, None, users=SCHED.max_num_seqs)
    capped, fe = _run(cost, reqs, front, users=SCHED.max_num_seqs)
    core_tokens_per_s = 1 / token_cpu
    assert capped.output_tokens_per_s <= core_tokens_per_s * 1.001
    assert capped.output_tokens_per_s >= 0.95 * core_tokens_per_s
    assert bare.output_tokens_per_s > 1.5 * capped.output_tokens_per_s  # the engine alone goes faster
    assert fe is not None and fe.busy_s() / (capped.end_s - capped.arrival_s.min()) > 0.95

    # open loop at 1.3 cores of demand: the lateness (and so TTFT) grows by 0.3 s per second of arrivals,
    # while the engine's own queue stays empty (the requests wait in the API server)
    rho = 1.3
    rate = rho / (osl * token_cpu)
    t = np.arange(600) / rate
    late, _ = _run(cost, [(float(x), isl, osl) for x in t], front)
    slope = np.polyfit(t[100:], late.ttft_s[100:], 1)[0]
    assert slope == pytest.approx(rho - 1, rel=0.15)
    assert late.queue_at_arrival.max() <= 1  # the engine: at most a newcomer waiting for a step boundary
    below, _ = _run(cost, [(float(x), isl, osl) for x in t * 1.3 / 0.7], front)  # 0.7 of a core: no growth
    assert abs(np.polyfit(t[100:] * 1.3 / 0.7, below.ttft_s[100:], 1)[0]) < 0.01
