"""Planner and simulator price KV reuse with the same cost-layer functions: a host-tier read-back into a
TP-sharded replica (cost/kv_tiers.replica_read_back_s) and the prefill of a call behind a cached prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from terrazzo.kv.residency import DISK, HOST
from terrazzo.plan.kv_candidates import KvSite, _choice, catalog_tiers, cost_model_pricer
from terrazzo.plan.planning_graph import OpCandidate, PlanOp
from terrazzo.sim import kv_lanes
from terrazzo.sim.simulation import SimConfig, Simulation
from terrazzo.spec.spec_loader import load_cluster

ROOT = Path(__file__).parent.parent
EX = ROOT / "examples"


def planner_price(cat, fabric, tp: int, prefix_tokens: float, new_tokens: float):
    """The planner's prices for one aggregated call of llama-3-8b on H100 at `tp` behind `prefix_tokens`."""
    op = PlanOp("think.aggregated", "llm.aggregated", "think", 1.0, (), output_tokens=128.0, model="llama-3-8b",
                dtype="bf16")
    cand = OpCandidate("h100-sxm", tp, 1, 64, 1.0, 1.0, tp, 1.0)
    site = KvSite(op.name, "think", prefix_tokens, new_tokens, hold_s=1.0, hit_rate=1.0, edge="loop iteration")
    return site, cost_model_pricer(cat, fabric)(op, cand, site)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_a_host_read_back_is_priced_alike_at_tp(tp, monkeypatch):
    """The simulator's read-back of each call's host-tier blocks equals the planner's transfer for a prefix
    of that many tokens on the same TP-sharded replica: every device reads its own shard over its own link."""
    import test_sim_kv

    cluster, cat = load_cluster(EX / "clusters/hetero.yaml")
    seen: list[tuple[float, float]] = []
    route = kv_lanes.PoolKv.route

    def spy(self, chain, prefix_tokens, isl, now, reuse):
        look = route(self, chain, prefix_tokens, isl, now, reuse)
        if look.match is not None and look.match.blocks[HOST] and not look.match.blocks[DISK]:
            seen.append((look.match.blocks[HOST] * self.block_size, look.transfer_s))
        return look

    monkeypatch.setattr(kv_lanes.PoolKv, "route", spy)
    model = test_sim_kv.tool_loop((cluster, cat), 2.0, {"policy": "host"}, tp=tp)
    Simulation(model, SimConfig(duration_s=30, seed=2)).run()
    assert len(seen) > 20
    host_tier = catalog_tiers(cat)("h100-sxm")[0]
    for tokens, sim_s in seen[:: max(1, len(seen) // 10)]:
        site, priced = planner_price(cat, cluster.fabric, tp, tokens, 256.0)
        assert priced is not None and priced.devices == tp
        assert sim_s == pytest.approx(_choice("host", site, priced, host_tier).transfer_s, rel=1e-9)


PROFILE = ROOT / "bench/data/kv_sim_live/vllm-profile-front-end.yaml"  # a vLLM CPU profile with reuse points


def lone_call_ttft_s(pool, new_tokens: int, cached_tokens: int) -> float:
    """The simulator's TTFT of one call alone on an idle replica of `pool` with `cached_tokens` resident."""
    from terrazzo.sim.pools import Seq

    got: list[float] = []
    seq = Seq(new_tokens + cached_tokens, 8, lambda s, r: got.append(s.t_first - s.t_call), None, pool.env.now)
    seq.done = cached_tokens
    pool.submit(seq, 0)
    pool.env.run()
    return got[0]


def test_planner_and_simulator_price_a_cached_call_alike_on_a_catalog_gpu():
    """The simulation's own pool (tool loop on H100, TP 2) and the planner's pricer give one cached call
    (300 new tokens behind 1,700) the same TTFT, and the cold call the same too (2,000 tokens: one engine
    iteration; a longer cold prompt is chunked by the simulated engine, not by the planner)."""
    import test_sim_kv

    cluster, cat = load_cluster(EX / "clusters/hetero.yaml")
    sim = Simulation(test_sim_kv.tool_loop((cluster, cat), 1.0, {"policy": "retain"}, tp=2), SimConfig(duration_s=1))
    pool = sim.pools["llm"]
    _, priced = planner_price(cat, cluster.fabric, 2, 1700.0, 300.0)
    assert priced is not None
    assert lone_call_ttft_s(pool, 300, 1700) == pytest.approx(priced.hit_s, rel=1e-6)
    assert lone_call_ttft_s(pool, 2000, 0) == pytest.approx(priced.full_s, rel=1e-6)
    assert priced.hit_s < 0.5 * priced.full_s


def test_planner_and_simulator_price_a_cached_call_with_a_profiles_reuse_points(tmp_path):
    """A vLLM profile whose reuse points cost a known extra per cached token and per (new × cached) pair
    beyond the cold model: the planner's hit price is each measured point, and the simulator's pool for
    that profile (sim/kv_predict.py) gives a lone call the same TTFT."""
    import yaml

    from terrazzo.catalog.catalog_loader import load_catalog
    from terrazzo.cost.candidates import deployment
    from terrazzo.cost.reuse_calibration import chunk_prefill
    from terrazzo.sim.engine import Environment
    from terrazzo.sim.kv_predict import profiled_pool
    from terrazzo.sim.pools import LlmPool

    doc = yaml.safe_load(PROFILE.read_text())
    model, device, dtype = doc["llm"]["name"], doc["device"]["name"], doc["llm"]["dtype"]
    dep = deployment(load_catalog([], [PROFILE]), model, device, dtype, 1, 1)
    per_token_s, per_pair_s = 2e-5, 1e-8
    measured = {}
    for p in doc["points"]["reuse_prefill"]:
        n, k = p["new"], p["cached"]
        t = chunk_prefill(dep, n, n * n + 2 * n * k).latency_s + per_token_s * k + per_pair_s * n * k
        p["timing"] = {**p["timing"], "median_s": t, "p10_s": 0.9 * t, "p90_s": 1.1 * t}
        measured[n, k] = t
    prof = tmp_path / "profile.yaml"
    prof.write_text(yaml.safe_dump(doc))
    cat, pp = load_catalog([], [prof]), profiled_pool(prof)
    op = PlanOp("a.aggregated", "llm.aggregated", "a", 1.0, (), output_tokens=32.0, model=model, dtype=dtype)
    cand = OpCandidate(device, 1, 1, pp.sched.max_num_seqs, 1.0, 1.0, 1, 1.0)
    assert len(measured) >= 3
    for (n, k), t in measured.items():
        priced = cost_model_pricer(cat, None)(op, cand, KvSite(op.name, "a", k, n, 1.0, 1.0, "loop iteration"))
        assert priced is not None
        assert priced.hit_s == pytest.approx(t, rel=1e-6)
        pool = LlmPool(Environment(), "p", "aggregated", pp.cost, 1, 1, pp.sched.max_num_seqs,
                       pp.sched.max_batched_tokens, pp.kv_tokens, pp.sched)
        assert n <= pp.sched.max_batched_tokens  # one engine iteration
        assert lone_call_ttft_s(pool, n, k) == pytest.approx(priced.hit_s, rel=1e-6)
