"""An assignment of shares to candidates, judged from the definitions alone — never the solver's word.

The MILP's answer passes through `check` before anyone sees it, every consumer of a plan file re-runs
it (plan/recheck.py), and the brute-force tests use the same function, so solver, enumeration and
plan files are held to one yardstick: the fleet model of plan/fleet_model.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from terrazzo.plan.fleet_model import (
    TOLERANCE,
    Assignment,
    PoolSize,
    Share,
    devices_used,
    edge_transfer_s,
    first_token_attainable,
    first_token_tail_s,
    fleet_usd_h,
    min_replicas,
    queues_for_first_token,
    size_pools,
)
from terrazzo.plan.planning_graph import PlanningGraph

__all__ = ["Assignment", "Share", "Verdict", "check", "devices_used", "first_token_attainable",
           "first_token_tail_s", "fleet_usd_h", "min_replicas"]


@dataclass(frozen=True)
class Verdict:
    usd_h: float
    e2e_latency_s: float
    finish_s: dict[str, float]
    violations: tuple[str, ...]
    slack_s: float = 0.0
    pools: dict[str, PoolSize] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def devices(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for p in self.pools.values():
            used[p.key.device] = used.get(p.key.device, 0) + p.devices
        return used


def check(graph: PlanningGraph, a: Assignment) -> Verdict:
    problems: list[str] = []
    active = set(a.placements)
    for group in graph.groups:
        on = [v for v, ops in group.variants.items() if ops and all(o in active for o in ops)]
        partial = [v for v, ops in group.variants.items() if any(o in active for o in ops) and v not in on]
        if len(on) != 1 or partial:
            problems.append(f"{group.node}: exactly one serving variant must be fully placed (got {on or partial})")
    grouped = {o for g in graph.groups for ops in g.variants.values() for o in ops}
    names = {o.name for o in graph.ops}
    for op in graph.ops:
        if op.name not in grouped and op.name not in active:
            problems.append(f"{op.name}: not placed")
    for name, shares in a.placements.items():
        if name not in names:
            problems.append(f"{name}: not an op of this agent's planning graph")
            continue
        problems += _shares_problems(graph, name, shares)
    if problems:
        return Verdict(math.inf, math.inf, {}, tuple(problems))
    pools = size_pools(graph, a)
    for name in a.replicas:
        if name not in pools:
            problems.append(f"pool {name}: no op is placed on it")
    for p in pools.values():
        if p.replicas < p.min_replicas:  # only when a plan file fixes the size
            problems.append(f"pool {p.name}: {p.replicas} replicas carry less than its load (needs {p.min_replicas})")
        for m in p.members:
            c = graph.op(m.op).candidates[m.candidate]
            limit = graph.op(m.op).first_token_limit_s
            if p.key.op is not None and queues_for_first_token(graph.op(m.op), c) and limit is not None:
                ttft = first_token_tail_s(graph, m.op, c, p.replicas, m.share)
                if ttft > limit * (1 + TOLERANCE) + TOLERANCE:
                    problems.append(f"{m.op}: p{graph.percentile:g} TTFT {ttft * 1e3:.1f} ms with {p.replicas} "
                                    f"replicas of {c.label} exceeds the {limit * 1e3:.4g} ms limit")
    used = devices_used(graph, pools)
    if graph.mode != "unconstrained":
        for device, n in used.items():
            cap = graph.inventory.get(device, 0)
            if n > cap and not (graph.mode == "own-and-buy" and device in graph.buy):
                problems.append(f"{device}: {n} devices used, inventory has {cap}")
    if graph.max_devices is not None and sum(used.values()) > graph.max_devices:
        problems.append(f"{sum(used.values())} devices used, the rack limit (max_devices) is {graph.max_devices}")
    if graph.max_kw is not None:
        from terrazzo.plan.power import fleet_power_kw

        kw = fleet_power_kw(graph, pools)
        if kw > graph.max_kw * (1 + TOLERANCE):
            problems.append(f"{kw:.2f} kW of device power, the limit (max_kw) is {graph.max_kw:g} kW")
    finish = finish_times(graph, a)
    e2e = max(finish.values(), default=0.0)
    slack = 0.0
    if graph.deadline_s is not None and e2e > graph.deadline_s * (1 + TOLERANCE) + TOLERANCE:
        slack = e2e - graph.deadline_s
        if math.isinf(graph.penalty_usd_h_per_s):
            problems.append(f"end-to-end {e2e * 1e3:.1f} ms exceeds the {graph.deadline_s * 1e3:.4g} ms SLA")
    penalty = 0.0 if math.isinf(graph.penalty_usd_h_per_s) else graph.penalty_usd_h_per_s * slack
    return Verdict(fleet_usd_h(graph, used, pools) + penalty, e2e, finish, tuple(problems), slack, pools)


def _shares_problems(graph: PlanningGraph, name: str, shares: tuple[Share, ...]) -> list[str]:
    o = graph.op(name)
    out = []
    if not shares:
        return [f"{name}: placed on no candidate"]
    for s in shares:
        if not 0 <= s.candidate < len(o.candidates):
            out.append(f"{name}: candidate #{s.candidate} does not exist")
            continue
        if not s.share > 0:
            out.append(f"{name}: share {s.share:g} on candidate #{s.candidate} must be positive")
        c = o.candidates[s.candidate]
        if not c.feasible:
            out.append(f"{name}: candidate {c.label} is infeasible ({c.reason})")
        elif c.device not in graph.cluster_devices:
            out.append(f"{name}: {c.device} is not in the cluster")
        elif not first_token_attainable(graph, name, c):
            out.append(f"{name}: p{graph.percentile:g} TTFT on an idle {c.label} already exceeds the "
                       f"{(o.first_token_limit_s or 0) * 1e3:.4g} ms limit")
    total = sum(s.share for s in shares)
    if abs(total - 1.0) > 1e-6:
        out.append(f"{name}: shares sum to {total:.6g}, not 1")
    if len({s.candidate for s in shares}) != len(shares):
        out.append(f"{name}: a candidate appears twice in its shares")
    return out


def finish_times(graph: PlanningGraph, a: Assignment) -> dict[str, float]:
    """Longest path with per-visit latencies (a split op: its slowest share) scaled by expected visits,
    transfers included."""
    preds: dict[str, list] = {}
    for e in graph.edges:
        if e.src in a.placements and e.dst in a.placements:
            preds.setdefault(e.dst, []).append(e)
    finish: dict[str, float] = {}
    devices = {op: a.devices_of(graph, op) for op in a.placements}

    def visit(name: str) -> float:
        if name in finish:
            return finish[name]
        finish[name] = 0.0  # guards against malformed cycles
        op = graph.op(name)
        start = 0.0
        for e in preds.get(name, []):
            t = edge_transfer_s(graph, e.kind, e.data_bytes, devices[e.src], devices[name])
            start = max(start, visit(e.src) + op.visits * t)
        finish[name] = start + op.visits * max(c.latency_s for c in a.candidates(graph, name))
        return finish[name]

    for name in a.placements:
        visit(name)
    return finish
