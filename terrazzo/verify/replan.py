"""Plans checked by simulating them at the planned rate, and re-planned where the simulation shows
the SLA missed.

The MILP prices latency from means, and first-token queues as if arrivals were Poisson. The SLA is
a percentile, and the queues behind a batched LLM pool see clumps. So after each solve the plan is
simulated (seeded, so planning stays deterministic) and, where it misses, the planning graph learns
what the simulation saw and the MILP runs again:
- each first-token op takes the arrival burstiness measured at its pool (sizing its replicas);
- an LLM node still over its TTFT limit plans to a limit shrunk by the overshoot;
- an end-to-end percentile over the deadline shrinks the deadline the MILP plans to by the ratio of
  the percentile to the mean-based estimate.
Up to MAX_ROUNDS; the plan records each round, and says so when the last one still misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.from_ir import build
from terrazzo.plan.planner import Plan, plan_graph
from terrazzo.plan.planning_graph import PlanningGraph
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.feedback import Feedback, simulate_plan

MAX_ROUNDS = 4
MARGIN = 0.95  # re-plan to 95 % of a missed target: the next simulation has its own sampling noise


def verified_plan(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
                  explain: bool = False, time_limit_s: float = 60.0, verify: bool = True) -> Plan:
    """The planner's plan; with `verify`, for an interactive SLA at a known rate, simulated at its rate
    and re-planned where the simulation misses the SLA."""
    graph = build(agent, workload, sla, cluster, catalog)
    solve = partial(plan_graph, name=agent.name, explain=explain, time_limit_s=time_limit_s)
    if not verify or not graph.rate_per_s or sla.mode != "interactive":
        return solve(graph)
    return refine(graph, solve, agent, workload, sla, cluster, catalog)


def refine(graph: PlanningGraph, solve: Callable[[PlanningGraph], Plan], agent: Agent, workload: Workload,
           sla: Sla, cluster: Cluster, catalog: Catalog, seed: int = 0) -> Plan:
    """`solve(graph)` → Plan; returns the last plan with its `verification` rounds filled in."""
    deadline_s = graph.deadline_s

    def solve_to_sla(g: PlanningGraph) -> Plan:  # judged, and reported, against the SLA's own deadline
        return replace(solve(g), deadline_s=deadline_s)

    plan = solve_to_sla(graph)
    rounds: list[dict[str, Any]] = []
    for i in range(1, MAX_ROUNDS + 1):
        fb = simulate_plan(plan.to_json(), agent, workload, sla, cluster, catalog, seed)
        entry: dict[str, Any] = {"round": i, "tco_usd_h": plan.usd_h, "meets_sla": fb.meets_sla,
                                 "percentile": graph.percentile,
                                 "e2e_at_sla_s": fb.e2e_at_sla_s,
                                 "ttft_at_sla_s": {n: at for n, (at, _) in fb.ttft_at_sla_s.items()},
                                 "breaks": list(fb.breaks)}
        rounds.append(entry)
        if fb.meets_sla:
            break
        learned, actions = _learn(graph, plan, fb)
        entry["actions"] = actions
        if learned == graph or i == MAX_ROUNDS:
            break
        try:
            plan = solve_to_sla(learned)
        except PlanInfeasible as exc:
            entry["actions"].append(f"re-planning failed, kept this plan: {exc}")
            break
        graph = learned
    return replace(plan, verification=tuple(rounds))


def _learn(graph: PlanningGraph, plan: Plan, fb: Feedback) -> tuple[PlanningGraph, list[str]]:
    actions: list[str] = []
    misses = fb.ttft_misses()
    ops = []
    for o in graph.ops:
        if o.first_token_limit_s is None:
            ops.append(o)
            continue
        scv = max(o.arrival_scv, fb.arrival_scv.get(o.name, o.arrival_scv))
        limit = o.first_token_limit_s
        node = o.node
        if node in misses:
            if scv > o.arrival_scv * 1.05:
                actions.append(f"{o.name}: arrivals measured with squared CV {scv:.2f} (planned {o.arrival_scv:.2f})")
            else:
                limit = limit * MARGIN / misses[node]
                actions.append(f"{o.name}: TTFT planned to {limit * 1e3:.1f} ms ({misses[node]:.2f}× over)")
        ops.append(replace(o, arrival_scv=scv, first_token_limit_s=limit))
    deadline = graph.deadline_s
    if deadline is not None and fb.deadline_s is not None and fb.e2e_at_sla_s > fb.deadline_s:
        tail = fb.e2e_at_sla_s / max(plan.e2e_latency_s, 1e-12)
        deadline = min(deadline * MARGIN, fb.deadline_s * MARGIN / tail)
        actions.append(f"end-to-end: planned to {deadline * 1e3:,.0f} ms (p{graph.percentile:g} "
                       f"{fb.e2e_at_sla_s * 1e3:,.0f} ms is {tail:.2f}× the mean-based estimate)")
    if not math.isfinite(deadline or 0.0):
        deadline = graph.deadline_s
    return replace(graph, ops=tuple(ops), deadline_s=deadline), actions
