"""The TCO planner: plans pass the independent check, baselines and explanations say the right thing
(MILP = brute force is in test_plan_exact.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from terrazzo.cost.tco import HourlyCost
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.check import Share, check
from terrazzo.plan.milp import solve_milp
from terrazzo.plan.planner import plan_graph
from terrazzo.plan.planning_graph import OpCandidate, PlanEdge, PlanningGraph, PlanOp
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.replan import verified_plan as plan

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("fast", "cheap", "cpu")


def _graph(ops, edges, groups=(), rate=10.0, deadline=1.0, mode="unconstrained", inventory=None, buy=()):
    costs = {"fast": HourlyCost("fast", 2.0, 0.5, 0.0), "cheap": HourlyCost("cheap", 0.6, 0.2, 0.0),
             "cpu": HourlyCost("cpu", 0.3, 0.1, 0.0), "h100-sxm": HourlyCost("h100-sxm", 1.0, 0.3, 0.0)}
    links = {"fast": 50e9, "cheap": 12.5e9, "cpu": 12.5e9, "h100-sxm": 50e9}
    return PlanningGraph(tuple(ops), tuple(edges), tuple(groups), rate, deadline, 0.8, math.inf, costs, links, 5e-6,
                         DEVICES, inventory or {}, tuple(buy), mode)


def test_transfer_time_can_make_the_cheap_split_infeasible():
    """Prefill on `fast`, decode on `cheap` is cheapest, but the KV crossing the slow NIC breaks the SLA."""
    kv_bytes = 12.5e9 * 0.3  # 300 ms over cheap's 12.5 GB/s NIC
    ops = [PlanOp("p", "llm.prefill", "n", 1.0, (OpCandidate("fast", 1, 1, 1, 0.1, 100.0, 1, 2.5),)),
           PlanOp("d", "llm.decode", "n", 1.0, (OpCandidate("fast", 1, 1, 1, 0.2, 100.0, 1, 2.5),
                                                 OpCandidate("cheap", 1, 1, 1, 0.25, 100.0, 1, 0.8)))]
    loose = _graph(ops, [PlanEdge("p", "d", kv_bytes, "kv")], deadline=1.0)
    tight = _graph(ops, [PlanEdge("p", "d", kv_bytes, "kv")], deadline=0.62)
    assert loose.op("d").candidates[solve_milp(loose).assignment.placements["d"][0].candidate].device == "cheap"
    chosen = solve_milp(tight).assignment
    assert tight.op("d").candidates[chosen.placements["d"][0].candidate].device == "fast"
    assert check(tight, chosen).e2e_latency_s == pytest.approx(0.1 + 0.2 + 0.3 * 12.5 / 50 + 5e-6)


def test_inventory_binds_and_is_explained():
    ops = [PlanOp("a", "compute", "a", 1.0, (OpCandidate("cheap", 1, 1, 1, 0.01, 2.0, 1, 0.8),))]
    graph = _graph(ops, [], rate=10.0, mode="inventory", inventory={"cheap": 3})
    with pytest.raises(PlanInfeasible, match=r"inventory binds.*cheap: needs 7, inventory has 3"):
        plan_graph(graph, "t")


def test_replicas_cover_demand_under_the_utilisation_cap():
    ops = [PlanOp("a", "compute", "a", 2.0, (OpCandidate("cpu", 1, 1, 1, 0.01, 7.0, 1, 0.4),))]
    graph = _graph(ops, [], rate=10.0)
    a = solve_milp(graph).assignment
    # demand 20 visits/s, 7/s per replica at 80 % → ceil(20 / 5.6) = 4
    assert a.placements["a"] == (Share(0, 1.0),)
    assert check(graph, a).pools["cpu-tp1-pp1"].replicas == 4
    assert check(graph, a).usd_h == pytest.approx(4 * 0.4)


def _voice():
    cluster, cat = load_cluster(ROOT / "examples" / "clusters" / "hetero.yaml")
    agent = load_agent(ROOT / "examples" / "agents" / "voice-agent.yaml", cat)
    return agent, cluster, cat


def test_voice_agent_plan_passes_the_check_and_beats_h100_baseline():
    agent, cluster, cat = _voice()
    workload = load_workload(ROOT / "examples" / "workloads" / "steady-5rps.yaml", agent)
    sla = load_sla(ROOT / "examples" / "slas" / "interactive.yaml", agent)
    result = plan(agent, workload, sla, cluster, cat, explain=True)
    ops = {p.name for p in result.ops}
    assert {"asr", "search.lookup", "search.compute", "speak"} <= ops
    assert ("think.aggregated" in ops) != ({"think.prefill", "think.decode"} <= ops)
    assert result.e2e_latency_s <= sla.end_to_end.latency_s
    ref = next(b for b in result.baselines if b.name.startswith("H100::H100"))
    assert ref.feasible and ref.usd_h >= result.usd_h - 1e-9
    assert all(b.usd_h >= result.usd_h - 1e-9 for b in result.baselines if b.feasible)
    assert set(result.explain) == ops
    doc = result.to_json()
    assert doc["schema"] == "terrazzo.plan/v2" and doc["placement"]["schema"] == "terrazzo.placement/v1"
    assert set(doc["placement"]["placements"]) == ops


def test_unattainable_tbt_names_the_device_and_the_best_it_can_do(tmp_path):
    _, _, cat = _voice()
    agent = load_agent(ROOT / "examples" / "agents" / "voice-agent.yaml", cat)
    (tmp_path / "a40.yaml").write_text("devices: [a40, epyc-9654]\n")
    (tmp_path / "sla.yaml").write_text("llm_default: {ttft_s: 250 ms, tbt_s: 20 ms}\n")
    cluster, cat = load_cluster(tmp_path / "a40.yaml")
    workload = load_workload(ROOT / "examples" / "workloads" / "steady-5rps.yaml", agent)
    expected = r"TBT 20 ms unattainable for llama-3-70b fp16 on a40: best \d+\.\d ms at TP=8"
    with pytest.raises(PlanInfeasible, match=expected):
        plan(agent, workload, load_sla(tmp_path / "sla.yaml", agent), cluster, cat)


def test_soft_sla_trades_slack_for_penalty():
    """With a finite λ the planner may miss the deadline when paying λ per second of slack is cheaper."""
    ops = [PlanOp("a", "compute", "a", 1.0, (OpCandidate("fast", 1, 1, 1, 0.1, 100.0, 1, 2.5),
                                             OpCandidate("cheap", 1, 1, 1, 0.3, 100.0, 1, 0.8)))]
    base = _graph(ops, [], rate=1.0, deadline=0.2)
    from dataclasses import replace

    hard = solve_milp(base).assignment
    assert base.op("a").candidates[hard.placements["a"][0].candidate].device == "fast"
    cheap_penalty = replace(base, penalty_usd_h_per_s=1.0)  # 0.1 s late costs $0.10/h < $1.70/h saved
    soft = solve_milp(cheap_penalty)
    assert cheap_penalty.op("a").candidates[soft.assignment.placements["a"][0].candidate].device == "cheap"
    verdict = check(cheap_penalty, soft.assignment)
    assert verdict.ok and verdict.slack_s == pytest.approx(0.1)
    assert verdict.usd_h == pytest.approx(0.8 + 0.1) == pytest.approx(soft.objective_usd_h)
    dear_penalty = replace(base, penalty_usd_h_per_s=100.0)
    dear = solve_milp(dear_penalty).assignment
    assert dear_penalty.op("a").candidates[dear.placements["a"][0].candidate].device == "fast"


def test_offline_mode_drops_latency_limits_and_is_never_dearer(tmp_path):
    agent, cluster, cat = _voice()
    workload = load_workload(ROOT / "examples" / "workloads" / "steady-200rps.yaml", agent)
    interactive = plan(agent, workload, load_sla(ROOT / "examples" / "slas" / "interactive.yaml", agent),
                       cluster, cat)
    (tmp_path / "offline.yaml").write_text("mode: offline\n")
    offline = plan(agent, workload, load_sla(tmp_path / "offline.yaml", agent), cluster, cat)
    assert offline.deadline_s is None
    assert offline.usd_h <= interactive.usd_h + 1e-9
    assert offline.output_tokens_per_s == pytest.approx(interactive.output_tokens_per_s)
    decode = [p for p in offline.ops if p.kind in ("llm.decode", "llm.aggregated")]
    assert decode and max(p.candidate.batch for p in decode) > 1


@pytest.mark.parametrize("name", ["voice-agent", "rag-support", "langchain-agent", "moe-agent"])
def test_planning_graph_from_ir_is_acyclic_and_covers_every_op(name):
    from terrazzo.plan.from_ir import build

    cluster, cat = load_cluster(ROOT / "examples" / "clusters" / "hetero.yaml")
    agent = load_agent(ROOT / "examples" / "agents" / f"{name}.yaml", cat)
    graph = build(agent, load_workload(ROOT / "examples" / "workloads" / "steady-5rps.yaml", agent),
                  load_sla(ROOT / "examples" / "slas" / "interactive.yaml", agent), cluster, cat)
    succ: dict[str, list[str]] = {}
    for e in graph.edges:
        succ.setdefault(e.src, []).append(e.dst)
    state: dict[str, int] = {}

    def acyclic(node: str) -> bool:
        if state.get(node) == 1:
            return False
        if state.get(node) == 2:
            return True
        state[node] = 1
        ok = all(acyclic(n) for n in succ.get(node, []))
        state[node] = 2
        return ok

    assert all(acyclic(o.name) for o in graph.ops)
    assert {e.src for e in graph.edges} | {e.dst for e in graph.edges} <= {o.name for o in graph.ops}
    assert all(o.candidates for o in graph.ops)


def test_baselines_answered_without_a_milp_agree_with_the_milp():
    """A homogeneous baseline priced from the non-LLM optimum and each LLM op's cheapest allowed column
    (or declared infeasible when some LLM op has none) says what the restricted MILP says, and an
    infeasible one names the op and its closest miss on the baseline's own device."""
    from terrazzo.plan.from_ir import build
    from terrazzo.plan.planner import _Decomposed, _is_llm, _llm_only_on, _restricted
    from terrazzo.spec.workload import Workload

    agent, cluster, cat = _voice()
    cluster = cluster.model_copy(update={"devices": [*cluster.devices, "l4"]})
    sla = load_sla(ROOT / "examples" / "slas" / "interactive.yaml", agent)
    graph = build(agent, Workload.model_validate({"arrival": {"rate_per_s": 5}}), sla, cluster, cat)
    quick = _Decomposed(graph, solve_milp(graph))
    nodes = {g.node for g in graph.groups}
    devices = sorted({c.device for o in graph.ops if _is_llm(o.name, graph) for c in o.candidates} &
                     set(graph.cluster_devices))
    infeasible = 0
    for variant in ("aggregated", "disaggregated"):
        for d in devices:
            allow, variants = _llm_only_on(graph, d), dict.fromkeys(nodes, variant)
            fast = _restricted(graph, d, allow, variants, quick)
            sol = solve_milp(graph, allow, variants)
            assert fast.feasible == (sol.assignment is not None and check(graph, sol.assignment).ok), (d, variant)
            if fast.feasible:
                assert fast.usd_h == pytest.approx(check(graph, sol.assignment).usd_h, rel=1e-6)
            else:
                infeasible += 1
                assert d.split("-")[0] in fast.reason and "excluded by the baseline" not in fast.reason
    assert infeasible  # 70B fp16 does not fit on an L4 node the way the SLA needs
