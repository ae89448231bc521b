"""The TCO planner: MILP optimum equals brute force, plans pass the independent check, baselines and
explanations say the right thing."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.cost.tco import HourlyCost
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.check import Assignment, check, min_replicas
from terrazzo.plan.milp import solve_milp
from terrazzo.plan.planner import plan_graph
from terrazzo.plan.planning_graph import OpCandidate, PlanEdge, PlanningGraph, PlanOp, VariantGroup
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


@st.composite
def small_graphs(draw):
    """Chains of 1–3 ops, some LLM-like with two serving variants, random candidates and limits."""
    ops, edges, groups = [], [], []
    prev: list[str] = []
    for i in range(draw(st.integers(1, 3))):
        def cands():
            out = []
            for d in draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=3, unique=True)):
                price = {"fast": 2.5, "cheap": 0.8, "cpu": 0.4}[d]
                devices = draw(st.sampled_from([1, 2]))
                out.append(OpCandidate(d, devices, 1, 1, draw(st.floats(0.001, 0.4)), draw(st.floats(0.5, 40.0)),
                                       devices, price * devices, draw(st.booleans()) or True))
            return tuple(out)
        if draw(st.booleans()):
            a, p, d = f"n{i}.aggregated", f"n{i}.prefill", f"n{i}.decode"
            ops += [PlanOp(a, "llm.aggregated", f"n{i}", 1.0, cands(), "aggregated", 100.0),
                    PlanOp(p, "llm.prefill", f"n{i}", 1.0, cands(), "disaggregated"),
                    PlanOp(d, "llm.decode", f"n{i}", 1.0, cands(), "disaggregated", 100.0)]
            edges.append(PlanEdge(p, d, draw(st.floats(0, 2e8)), "kv"))
            groups.append(VariantGroup(f"n{i}", {"aggregated": (a,), "disaggregated": (p, d)}))
            entry, exit_ = [a, p], [a, d]
        else:
            name = f"n{i}"
            ops.append(PlanOp(name, "compute", name, draw(st.sampled_from([0.5, 1.0, 2.0])), cands()))
            entry, exit_ = [name], [name]
        edges += [PlanEdge(s, t, draw(st.floats(0, 1e8))) for s in prev for t in entry]
        prev = exit_
    mode = draw(st.sampled_from(["unconstrained", "inventory", "own-and-buy"]))
    inventory = {d: draw(st.integers(0, 6)) for d in DEVICES} if mode != "unconstrained" else {}
    buy = tuple(draw(st.lists(st.sampled_from(DEVICES), unique=True))) if mode == "own-and-buy" else ()
    return _graph(ops, edges, groups, draw(st.floats(0.5, 30.0)), draw(st.floats(0.05, 1.5)), mode, inventory, buy)


def brute_force(graph: PlanningGraph) -> float:
    """Cheapest assignment that passes the independent check, by enumeration."""
    variant_sets = [list(g.variants.values()) for g in graph.groups]
    grouped = {o for g in graph.groups for ops in g.variants.values() for o in ops}
    free = [o.name for o in graph.ops if o.name not in grouped]
    best = math.inf
    for pick in itertools.product(*variant_sets):
        active = free + [o for ops in pick for o in ops]
        choices = [range(len(graph.op(o).candidates)) for o in active]
        for ks in itertools.product(*choices):
            chosen = {}
            for o, k in zip(active, ks, strict=True):
                c = graph.op(o).candidates[k]
                chosen[o] = (k, min_replicas(graph, o, c))
            v = check(graph, Assignment(chosen))
            if v.ok:
                best = min(best, v.usd_h)
    return best


@settings(max_examples=120, deadline=None)
@given(small_graphs())
def test_milp_optimum_equals_brute_force(graph):
    expected = brute_force(graph)
    sol = solve_milp(graph)
    if math.isinf(expected):
        assert sol.assignment is None
        return
    assert sol.assignment is not None
    verdict = check(graph, sol.assignment)
    assert verdict.ok, verdict.violations
    assert verdict.usd_h == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_transfer_time_can_make_the_cheap_split_infeasible():
    """Prefill on `fast`, decode on `cheap` is cheapest, but the KV crossing the slow NIC breaks the SLA."""
    kv_bytes = 12.5e9 * 0.3  # 300 ms over cheap's 12.5 GB/s NIC
    ops = [PlanOp("p", "llm.prefill", "n", 1.0, (OpCandidate("fast", 1, 1, 1, 0.1, 100.0, 1, 2.5),)),
           PlanOp("d", "llm.decode", "n", 1.0, (OpCandidate("fast", 1, 1, 1, 0.2, 100.0, 1, 2.5),
                                                 OpCandidate("cheap", 1, 1, 1, 0.25, 100.0, 1, 0.8)))]
    loose = _graph(ops, [PlanEdge("p", "d", kv_bytes, "kv")], deadline=1.0)
    tight = _graph(ops, [PlanEdge("p", "d", kv_bytes, "kv")], deadline=0.62)
    assert loose.op("d").candidates[solve_milp(loose).assignment.chosen["d"][0]].device == "cheap"
    chosen = solve_milp(tight).assignment
    assert tight.op("d").candidates[chosen.chosen["d"][0]].device == "fast"
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
    assert a.chosen["a"] == (0, 4)
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
    assert doc["schema"] == "terrazzo.plan/v1" and doc["placement"]["schema"] == "terrazzo.placement/v1"
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
    assert base.op("a").candidates[hard.chosen["a"][0]].device == "fast"
    cheap_penalty = replace(base, penalty_usd_h_per_s=1.0)  # 0.1 s late costs $0.10/h < $1.70/h saved
    soft = solve_milp(cheap_penalty)
    assert cheap_penalty.op("a").candidates[soft.assignment.chosen["a"][0]].device == "cheap"
    verdict = check(cheap_penalty, soft.assignment)
    assert verdict.ok and verdict.slack_s == pytest.approx(0.1)
    assert verdict.usd_h == pytest.approx(0.8 + 0.1) == pytest.approx(soft.objective_usd_h)
    dear_penalty = replace(base, penalty_usd_h_per_s=100.0)
    assert dear_penalty.op("a").candidates[solve_milp(dear_penalty).assignment.chosen["a"][0]].device == "fast"


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
