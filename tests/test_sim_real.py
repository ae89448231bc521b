"""Sim-to-real, short: a live vLLM CPU server profiled by `terrazzo profile --engine vllm`, then driven
with Poisson arrivals at a quarter of its measured capacity; the simulator, on the same arrivals and
token counts, predicts p50 TBT within [0.67, 1.5] of what was measured, over ≥ 200 requests, and prints
TTFT and E2E beside it (not yet within that bound here: see below).

The bound is loose on purpose: the machine has two shared cores (one runs vLLM's engine, the other its
API server, this load generator and other jobs), so single runs move by tens of percent. The load is a
quarter of capacity because above about a third the API server's core, not the engine, sets the
latency here (its waiting gauge stays at 0 while client TTFT doubles), and the simulator models the
engine, not that process's CPU (docs/simulator.md, "Sim-to-real"). The benchmark
(bench/bench_sim_real.py) prints every load. It is a bound on ratios, never on wall-clock time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from terrazzo.profile.profile_command import Options, profile_command
from terrazzo.profile.profile_file import load_profile
from terrazzo.profile.vllm_load import PromptMaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_sim_real as B


@pytest.fixture(scope="module")
def profiled(vllm_tiny_server, tmp_path_factory):
    srv = vllm_tiny_server
    out = tmp_path_factory.mktemp("vllm-profile") / "vllm-profile.yaml"
    opts = Options.vllm(model=srv.checkpoint, model_name="tiny-random-llama-l4-h256", vllm_server=srv, warmup=1,
                        repeats=2, isl=(16, 128, 512), prefill_batch=(1, 4), decode_batch=(1, 8, 16),
                        decode_context=(64, 512), gemm_n=512, copy_mb=32, command="terrazzo profile --engine vllm")
    profile_command(opts, out, Console(quiet=True))
    return out


def test_the_vllm_profile_records_the_engine_and_its_scheduler(profiled, vllm_tiny_server):
    prof = load_profile(profiled)
    assert prof.engine == f"vllm-{vllm_tiny_server.version}" and vllm_tiny_server.version
    st = dict(prof.engine_settings or {})
    assert st.pop("frontend_ms") > 0  # a request's time outside the engine (HTTP, API server)
    assert st == {"max_num_seqs": 16, "max_batched_tokens": 1024, "block_size": 128,
                  "kv_blocks": vllm_tiny_server.kv_blocks}
    assert {"prefill", "decode"} <= set(prof.fit.ops)
    steps = {(p.batch, p.context): p.timing.median_s for p in prof.points.decode}
    assert min(steps.values()) > 0 and max(p.timing.median_s for p in prof.points.prefill) > 0


def test_simulated_p50_latencies_match_the_live_pool(profiled, vllm_tiny_server):
    srv = vllm_tiny_server
    record = B.pool_record(profiled)
    sim = B.SimPool(profiled, record)
    assert (sim.sched.policy, sim.sched.kv, sim.sched.max_batched_tokens) == ("chunked", "paged", 1024)
    rng = np.random.default_rng(7)
    pm = PromptMaker(srv.base_url, str(srv.checkpoint), 7)
    model = str(srv.checkpoint)
    pairs = B.lengths(120, rng, 0.25, 0.0625, 1024, 128)
    cap_measured, cap_predicted = B.capacity(srv, pm, model, sim, pairs, 16)
    assert cap_measured > 0 and cap_predicted > 0
    n = 220
    gaps = rng.exponential(1 / (0.25 * cap_measured), size=n)
    arrivals = [(float(t), i, o) for t, (i, o) in zip(np.cumsum(gaps) - gaps[0], B.lengths(n, rng, 0.25, 0.0625,
                                                                                          1024, 128), strict=True)]
    live, sim_run = B.compare(srv, pm, model, sim, arrivals)
    ratios = B.p50_ratios(live, sim_run)
    print("\n".join(B.table("Poisson at 25 % of capacity", live, sim_run)))
    assert len(live.recs) >= 200
    # TBT is the engine's decode step, which the simulator models. TTFT and E2E also hold the API server's
    # queue on this 2-core machine, which it does not model yet (last runs: p50 ratio 0.40-0.45): printed
    # above and by the benchmark, asserted once the front end is modelled (docs/simulator.md, Sim-to-real).
    assert 0.67 <= ratios["tbt_s"] <= 1.5, f"p50 TBT: predicted/measured {ratios['tbt_s']:.2f}"
    assert all(r > 0 for r in ratios.values()), ratios
