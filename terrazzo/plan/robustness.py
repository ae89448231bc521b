"""Is an op's device choice robust to the cost model's error? The "robust"/"fragile" line of --explain.

Each candidate carries the cross-validated spread of its estimate (p10/p90 of measured ÷ predicted
time, terrazzo.cost.serving_model.spread_for). A replica's cost per visit scales with its service time,
so the choice is fragile when the best candidate on another device type, at the optimistic edge of its
range, beats the chosen one at the pessimistic edge of its own.
"""

from __future__ import annotations

from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp


def usd_per_visit(c: OpCandidate) -> float:
    return c.usd_h / c.rate_per_s if c.rate_per_s > 0 else float("inf")


def robustness(op: PlanOp, chosen: OpCandidate, graph: PlanningGraph) -> str:
    if chosen.spread is None:
        return "robustness unknown (analytic estimate, no cross-validated error)"
    rivals = [c for c in op.candidates if c.feasible and c.device != chosen.device
              and c.device in graph.cluster_devices and c.rate_per_s > 0]
    if not rivals:
        return "robust (no feasible alternative device type)"
    worst = usd_per_visit(chosen) * chosen.spread[1]
    rival = min(rivals, key=lambda c: usd_per_visit(c) * (c.spread or (1.0, 1.0))[0])
    best_rival = usd_per_visit(rival) * (rival.spread or (1.0, 1.0))[0]
    lo, hi = chosen.spread
    band = f"model error p10..p90 ×{lo:.2f}..×{hi:.2f}"
    if best_rival < worst:
        return (f"fragile: at the edge of the error range {rival.label} would be cheaper "
                f"(${best_rival * 1e3:.3f} vs ${worst * 1e3:.3f} per 1k visits; {band})")
    return f"robust: still cheapest at the edge of the error range ({band})"
