"""Power and energy of a placement, one rule for the MILP's `max_kw` rows, the checker and the plan
report: each replica's devices draw idle power plus the op's utilisation share of the span to TDP
(terrazzo/cost/energy.py). The utilisation is the op's demand over its replicas' sustained rate, a
constant per (op, candidate, replicas), so the MILP's power row stays linear."""

from __future__ import annotations

import math

from terrazzo.cost.energy import PowerCurve, joules_per_request
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph


def utilisation(graph: PlanningGraph, op: str, cand: OpCandidate, replicas: int) -> float:
    """Share of the replicas' sustained rate the op's demand uses (0 for ops with no rate limit)."""
    demand = graph.rate_per_s * graph.op(op).visits
    if replicas <= 0 or not math.isfinite(cand.rate_per_s) or cand.rate_per_s <= 0:
        return 0.0
    return min(demand / (replicas * cand.rate_per_s), 1.0)


def curve(graph: PlanningGraph, device: str) -> PowerCurve | None:
    return graph.power.get(device)


def op_power_w(graph: PlanningGraph, op: str, cand: OpCandidate, replicas: int) -> float:
    """Device watts of `replicas` replicas of `cand` serving `op` (0 when the graph carries no power data)."""
    c = curve(graph, cand.device)
    if c is None:
        return 0.0
    return replicas * cand.devices * c.at(utilisation(graph, op, cand, replicas))


def fleet_power_kw(graph: PlanningGraph, chosen: dict[str, tuple[int, int]]) -> float:
    """Device power of an assignment (op → (candidate index, replicas)), kW; idle owned devices are off."""
    return sum(op_power_w(graph, op, graph.op(op).candidates[k], n) for op, (k, n) in chosen.items()) / 1e3


def energy_j_per_request(graph: PlanningGraph, chosen: dict[str, tuple[int, int]]) -> float:
    return joules_per_request(fleet_power_kw(graph, chosen) * 1e3, graph.pue, graph.rate_per_s)
