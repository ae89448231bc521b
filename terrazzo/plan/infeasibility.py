"""Why nothing is feasible: the constraint that binds and what the closest option misses by, said in words
(`terrazzo plan` prints it; baselines that cannot be met reuse it)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from terrazzo.plan.check import Assignment, check
from terrazzo.plan.milp import solve_milp
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph


def explain_infeasible(graph: PlanningGraph) -> str:
    """Which constraint binds and by how much, op by op, then inventory, then the end-to-end SLA."""
    lines = []
    for o in graph.ops:
        in_cluster = [c for c in o.candidates if c.device in graph.cluster_devices]
        if any(c.feasible for c in in_cluster):
            continue
        if o.name in {op for g in graph.groups for ops in g.variants.values() for op in ops}:
            group = next(g for g in graph.groups if any(o.name in ops for ops in g.variants.values()))
            others = [op for v, ops in group.variants.items() for op in ops if o.name not in ops]
            if others and all(any(c.feasible and c.device in graph.cluster_devices
                                  for c in graph.op(x).candidates) for x in others):
                continue  # the other serving variant can still do it
        lines.append(closest_miss(o, in_cluster))
    if lines:
        return "; ".join(lines)
    if graph.mode != "unconstrained":
        free = solve_milp(replace(graph, mode="unconstrained"))
        if free.assignment is not None:
            need = check(replace(graph, mode="unconstrained"), free.assignment).devices
            short = [f"{d}: needs {n}, inventory has {graph.inventory.get(d, 0)}" for d, n in need.items()
                     if n > graph.inventory.get(d, 0) and not (graph.mode == "own-and-buy" and d in graph.buy)]
            if short:
                return ("inventory binds: the cheapest plan without it uses " + ", ".join(short)
                        + " (raise the inventory or add the device to 'buy', docs/clusters.md)")
    if graph.deadline_s is not None:
        relaxed = solve_milp(replace(graph, deadline_s=None))
        if relaxed.assignment is not None:
            fastest = _fastest_e2e(graph)
            return (f"end-to-end SLA {graph.deadline_s * 1e3:g} ms unattainable: the fastest placement takes "
                    f"{fastest * 1e3:.1f} ms ({(fastest - graph.deadline_s) * 1e3:.1f} ms over)")
    return "no feasible plan (the demand cannot be placed on the cluster's device types)"


def closest_miss(o: Any, cands: list[OpCandidate]) -> str:
    """Per device type, the fastest configuration that fits and the limit it misses."""
    if not cands:
        return f"{o.name}: no device in the cluster can run a {o.kind} op (add a CPU or accelerator type)"
    what = {"llm.prefill": "TTFT", "llm.decode": "TBT", "llm.aggregated": "TBT"}.get(o.kind, "latency")
    subject = f"{o.model} {o.dtype}" if o.model else o.name
    parts = []
    for device in dict.fromkeys(c.device for c in cands):
        mine = [c for c in cands if c.device == device]
        fits = [c for c in mine if "GB per device" not in c.reason and math.isfinite(c.latency_s)]
        if not fits:
            parts.append(f"on {device}: does not fit in memory ({mine[0].reason})")
            continue
        best = min(fits, key=lambda c: c.latency_s)
        miss = re.match(r"(TTFT|TBT) ([\d.]+) ms.*> ([\d.]+) ms", best.reason)
        if miss:
            parts.append(f"{miss.group(1)} {miss.group(3)} ms unattainable for {subject} on {device}: "
                         f"best {miss.group(2)} ms at TP={best.tp} PP={best.pp}")
        else:
            parts.append(f"{what} unattainable for {subject} on {device}: {best.reason or 'no capacity'}")
    return f"{o.name}: " + "; ".join(parts)


def _fastest_e2e(graph: PlanningGraph) -> float:
    """Critical path with every op on its fastest feasible candidate (a lower bound on E2E)."""
    fast: dict[str, int] = {}
    for o in graph.ops:
        ok = [(c.latency_s, k) for k, c in enumerate(o.candidates) if c.feasible and c.device in graph.cluster_devices]
        if ok:
            fast[o.name] = min(ok)[1]
    loose = replace(graph, deadline_s=None)
    best = math.inf
    for g_choice in _variant_choices(graph):
        chosen = {k: v for k, v in fast.items() if k not in g_choice}
        best = min(best, check(loose, Assignment.of(chosen)).e2e_latency_s)
    return best


def _variant_choices(graph: PlanningGraph) -> list[set[str]]:
    """Sets of ops to leave out, one per combination of serving variants (few nodes, few variants)."""
    combos: list[set[str]] = [set()]
    for g in graph.groups:
        combos = [c | {op for v2, ops in g.variants.items() if v2 != v for op in ops}
                  for c in combos for v in g.variants]
    return combos[:256]
