"""The verification loop: trace workloads are planned at their measured rate and burstiness, a TBT miss
tightens the decode candidates, targets bisect between failing and passing, and `terrazzo plan` exits 1
when no plan passes its own simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terrazzo.plan.from_ir import build
from terrazzo.sim.traces import load_trace
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.feedback import Feedback
from terrazzo.verify.replan import Targets, apply_targets, measured_arrival, tighten

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "examples/traces/azure-sample.csv"


def _voice():
    cluster, cat = load_cluster(ROOT / "examples/clusters/hetero.yaml")
    agent = load_agent(ROOT / "examples/agents/voice-agent.yaml", cat)
    return agent, cluster, cat, load_sla(ROOT / "examples/slas/interactive.yaml", agent)


def test_a_trace_workload_is_planned_at_its_measured_rate_and_burstiness():
    agent, cluster, cat, sla = _voice()
    w = Workload.model_validate({"arrival": {"process": "trace", "trace": str(TRACE)}})
    arrival = measured_arrival(w)
    trace = load_trace(TRACE)
    gaps = np.diff(np.sort(trace.arrival_s))
    assert arrival.rate_per_s == pytest.approx(trace.rate_per_s) and arrival.rate_per_s > 1
    assert arrival.scv == pytest.approx(gaps.var() / gaps.mean() ** 2)
    assert "measured rate" in arrival.notes[0]
    graph = build(agent, w, sla, cluster, cat, arrival)
    assert graph.rate_per_s == pytest.approx(trace.rate_per_s)
    assert {o.arrival_scv for o in graph.ops if o.first_token_limit_s is not None} == {arrival.scv}


def test_a_trace_without_a_measurable_rate_is_planned_at_zero_with_a_warning(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text(TRACE.read_text().splitlines()[0] + "\n" + TRACE.read_text().splitlines()[1] + "\n")
    w = Workload.model_validate({"arrival": {"process": "trace", "trace": str(one)}})
    arrival = measured_arrival(w)
    assert arrival.rate_per_s == 0 and "no measurable rate" in arrival.notes[0]


def test_a_tbt_miss_keeps_only_faster_decode_candidates():
    agent, cluster, cat, sla = _voice()
    w = Workload.model_validate({"arrival": {"rate_per_s": 5}})
    graph = build(agent, w, sla, cluster, cat)
    fb = Feedback(False, 10.0, 30.0, {}, {}, ("think TBT p99 30 ms > 20 ms",), {"think": (0.03, 0.02)})
    targets, actions = tighten(Targets(), fb, graph, None)  # type: ignore[arg-type]
    assert targets is not None and targets.tbt["think"] == pytest.approx(0.95 / 1.5)
    assert any("TBT 1.50× over" in a for a in actions)
    tight = apply_targets(graph, sla, targets)
    cap = 0.02 * targets.tbt["think"]
    for o in tight.ops:
        for c in o.candidates:
            if c.tbt_s is not None and c.feasible:
                assert c.tbt_s <= cap * (1 + 1e-6)
    assert sum(c.feasible for o in tight.ops for c in o.candidates) < sum(c.feasible for o in graph.ops
                                                                          for c in o.candidates)


def test_targets_bisect_between_a_failing_and_a_passing_point():
    fail, ok = Targets(ttft={"a": 1.0}, e2e=1.0), Targets(ttft={"a": 0.5}, e2e=0.6)
    mid = ok.between(fail, 0.5)
    assert mid.ttft["a"] == pytest.approx(0.75) and mid.e2e == pytest.approx(0.8)
    assert ok.distance(fail) == pytest.approx(0.5)


def test_the_check_simulation_reads_the_planning_graphs_edges_as_a_rebuild_would():
    """The planner hands its graph's edges to the check simulation instead of the simulator rebuilding
    the graph from the specs: the simulation must not change."""
    from terrazzo.plan.planner import plan_graph
    from terrazzo.verify.feedback import simulate_plan

    agent, cluster, cat, sla = _voice()
    workload = Workload.model_validate({"arrival": {"rate_per_s": 3}})
    graph = build(agent, workload, sla, cluster, cat)
    doc = plan_graph(graph, agent.name, with_baselines=False).to_json()
    edges = {(e.src, e.dst): e.data_bytes for e in graph.edges}
    assert any(b > 0 for b in edges.values())
    given = simulate_plan(doc, agent, workload, sla, cluster, cat, edge_bytes=edges)
    rebuilt = simulate_plan(doc, agent, workload, sla, cluster, cat)
    assert given == rebuilt


def test_a_long_chain_is_checked_on_bounded_op_visits_but_enough_requests_for_its_percentile():
    from terrazzo.verify.feedback import MIN_REQUESTS, VISIT_BUDGET, check_window

    def doc(n_ops: int, e2e_s: float) -> dict:
        return {"e2e_latency_s": e2e_s, "ops": [{"visits": 1.0, "latency_s": 0.05} for _ in range(n_ops)]}

    rate = 20.0
    short, _ = check_window(doc(10, 1.0), rate)
    long, drain = check_window(doc(1000, 500.0), rate)
    assert long * rate * 1000 <= VISIT_BUDGET * 1.001 < short * rate * 10 * 1000  # visits bounded, not requests
    assert long * rate >= MIN_REQUESTS >= 2 / 0.01  # at p99, at least two measured requests above it
    assert drain >= 4 * 500.0  # measured requests of a 500 s chain finish before the run ends


def test_a_ttft_miss_the_replay_explains_sizes_the_node_for_its_clump_instead_of_shrinking_its_target():
    """A node whose replayed arrivals need more replicas gets their clump on every first-token op it has
    (both serving variants) and keeps its TTFT target; a miss the replay cannot fix still shrinks it."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.bench_plan import DEVICES, agent_with_ops
    from terrazzo.catalog.catalog_loader import load_catalog
    from terrazzo.plan.fleet_model import dedicated_replicas
    from terrazzo.spec.cluster import Cluster
    from terrazzo.spec.sla import Sla

    sla = Sla.model_validate({"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}})
    graph = build(agent_with_ops(20), Workload.model_validate({"arrival": {"rate_per_s": 20}}), sla,
                  Cluster(devices=DEVICES), load_catalog())
    first = [o for o in graph.ops if o.first_token_limit_s is not None]
    sized, other = first[0].node, next(o.node for o in first if o.node != first[0].node)
    limit = {o.node: o.first_token_limit_s for o in first}
    fb = Feedback(False, 10.0, 30.0, {sized: (2 * limit[sized], limit[sized]), other: (2 * limit[other], limit[other])},
                  {}, (), {}, {sized: 6.0})
    targets, actions = tighten(Targets(), fb, graph, None)  # type: ignore[arg-type]
    assert targets is not None and targets.arrival_clump == {sized: 6.0}
    assert sized not in targets.ttft and targets.ttft[other] == pytest.approx(0.95 / 2)
    assert any("clumps of 6.0" in a for a in actions)
    planned = apply_targets(graph, sla, targets)
    assert len([o for o in planned.ops if o.first_token_limit_s is not None and o.node == sized]) == 2
    for o in planned.ops:
        if o.first_token_limit_s is not None and o.node == sized:
            assert o.arrival_clump == 6.0 and o.first_token_limit_s == pytest.approx(limit[sized])
            before = graph.op(o.name)
            ok = [c for c in o.candidates if c.feasible and c.first_token_s is not None]
            assert any(dedicated_replicas(planned, o.name, c) > dedicated_replicas(graph, before.name, c) for c in ok)
