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
