"""Power and energy of a fleet, one rule for the MILP's `max_kw` row, the checker and the plan report:
a pool's devices draw their idle power, plus the span to TDP for the share of them its load keeps busy
(load: replica-equivalents of busy time, share · demand / rate; plan/fleet_model.py). So a pool of N
replicas of d devices at utilisation u = load / N draws N·d·(idle + u·(TDP − idle)) — linear in the
pool size and in the placed shares, which keeps the MILP's power row linear.
"""

from __future__ import annotations

from collections.abc import Mapping

from terrazzo.cost.energy import joules_per_request
from terrazzo.plan.fleet_model import PoolSize
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph


def pool_power_w(graph: PlanningGraph, c: OpCandidate, replicas: int, load: float) -> float:
    """Device watts of `replicas` replicas of `c` carrying `load` replica-equivalents (0 without power data)."""
    curve = graph.power.get(c.device)
    if curve is None:
        return 0.0
    busy = min(max(load, 0.0), float(replicas))
    return c.devices * (replicas * curve.idle_w + busy * (curve.tdp_w - curve.idle_w))


def fleet_power_kw(graph: PlanningGraph, pools: Mapping[str, PoolSize]) -> float:
    """Device power of sized pools, kW (idle owned devices outside the plan are off)."""
    total = 0.0
    for p in pools.values():
        curve = graph.power.get(p.key.device)
        if curve is not None:
            busy = min(p.load, float(p.replicas))
            total += p.devices_per_replica * (p.replicas * curve.idle_w + busy * (curve.tdp_w - curve.idle_w))
    return total / 1e3


def energy_j_per_request(graph: PlanningGraph, pools: Mapping[str, PoolSize]) -> float:
    return joules_per_request(fleet_power_kw(graph, pools) * 1e3, graph.pue, graph.rate_per_s)
