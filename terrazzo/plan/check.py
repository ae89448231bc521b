"""An assignment of candidates and replicas, judged from the definitions alone — never the solver's word.

The MILP's answer passes through `check` before anyone sees it, and the brute-force tests use the
same function, so solver and enumeration are held to one yardstick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph
from terrazzo.plan.queueing import servers_for, wait_quantile_s

TOLERANCE = 1e-6


@dataclass(frozen=True)
class Assignment:
    """Active ops only: op name → (candidate index, replicas)."""

    chosen: dict[str, tuple[int, int]]

    def candidate(self, graph: PlanningGraph, op: str) -> OpCandidate:
        return graph.op(op).candidates[self.chosen[op][0]]


@dataclass(frozen=True)
class Verdict:
    usd_h: float
    e2e_latency_s: float
    finish_s: dict[str, float]
    violations: tuple[str, ...]
    slack_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


def min_replicas(graph: PlanningGraph, op: str, cand: OpCandidate) -> int:
    """Replicas that carry the op's demand within the utilisation cap (at least one) and, for a
    first-token op, keep its percentile TTFT — queueing included — within the limit."""
    o = graph.op(op)
    demand = graph.rate_per_s * o.visits
    if demand <= 0 or math.isinf(cand.rate_per_s):
        return 1
    n = max(1, math.ceil(demand / (cand.rate_per_s * graph.utilisation_cap) - TOLERANCE))
    if o.first_token_limit_s is None or cand.first_token_s is None:
        return n
    need = servers_for(demand, cand.first_token_s, first_token_tail_s(graph, op, cand), o.arrival_scv, o.work_scv,
                       graph.percentile, o.first_token_limit_s * (1 + TOLERANCE), n, cand.prefill_slots)
    return n if need is None else need  # None: unattainable at any size, which `check` reports


def first_token_attainable(graph: PlanningGraph, op: str, cand: OpCandidate) -> bool:
    """Whether an idle pool meets the op's percentile TTFT limit (queueing can only add to it)."""
    limit = graph.op(op).first_token_limit_s
    return limit is None or cand.first_token_s is None or first_token_tail_s(graph, op, cand) <= limit * (
        1 + TOLERANCE)


def first_token_tail_s(graph: PlanningGraph, op: str, cand: OpCandidate, replicas: int | None = None) -> float:
    """Percentile time to first token: service of the percentile prompt (plus the running batch a
    batched prefill waits out), and with `replicas` given, the percentile queueing wait too."""
    o = graph.op(op)
    if cand.first_token_s is None:
        return cand.latency_s
    service = cand.first_token_s * (o.work_tail_ratio + (1.0 if cand.prefill_slots > 1 else 0.0))
    if replicas is None:
        return service
    return service + wait_quantile_s(replicas * cand.prefill_slots, graph.rate_per_s * o.visits,
                                     cand.first_token_s, o.arrival_scv, o.work_scv, graph.percentile)


def devices_used(graph: PlanningGraph, a: Assignment) -> dict[str, int]:
    used: dict[str, int] = {}
    for op, (_, n) in a.chosen.items():
        c = a.candidate(graph, op)
        used[c.device] = used.get(c.device, 0) + c.devices * n
    return used


def fleet_usd_h(graph: PlanningGraph, used: dict[str, int]) -> float:
    """$/h of a fleet; in own-and-buy mode owned devices cost only power, bought ones their full TCO."""
    total = 0.0
    for device, n in used.items():
        cost = graph.device_costs[device]
        if graph.mode == "own-and-buy":
            owned = min(n, graph.inventory.get(device, 0))
            total += owned * (cost.power_usd_h + cost.host_usd_h) + (n - owned) * cost.usd_h
        else:
            total += n * cost.usd_h
    return total


def check(graph: PlanningGraph, a: Assignment) -> Verdict:
    problems: list[str] = []
    active = set(a.chosen)
    for group in graph.groups:
        on = [v for v, ops in group.variants.items() if ops and all(o in active for o in ops)]
        partial = [v for v, ops in group.variants.items() if any(o in active for o in ops) and v not in on]
        if len(on) != 1 or partial:
            problems.append(f"{group.node}: exactly one serving variant must be fully placed (got {on or partial})")
    grouped = {o for g in graph.groups for ops in g.variants.values() for o in ops}
    for op in graph.ops:
        if op.name not in grouped and op.name not in active:
            problems.append(f"{op.name}: not placed")
    for name, (k, n) in a.chosen.items():
        c = graph.op(name).candidates[k]
        if not c.feasible:
            problems.append(f"{name}: candidate {c.label} is infeasible ({c.reason})")
        if c.device not in graph.cluster_devices:
            problems.append(f"{name}: {c.device} is not in the cluster")
        need = min_replicas(graph, name, c)
        if n < need:
            problems.append(f"{name}: {n} replicas of {c.label} carry less than the demand (needs {need})")
        limit = graph.op(name).first_token_limit_s
        if limit is not None and c.first_token_s is not None:
            ttft = first_token_tail_s(graph, name, c, n)
            if ttft > limit * (1 + TOLERANCE) + TOLERANCE:
                problems.append(f"{name}: p{graph.percentile:g} TTFT {ttft * 1e3:.1f} ms with {n} replicas of "
                                f"{c.label} exceeds the {limit * 1e3:.4g} ms limit")
    used = devices_used(graph, a)
    if graph.mode != "unconstrained":
        for device, n in used.items():
            cap = graph.inventory.get(device, 0)
            if n > cap and not (graph.mode == "own-and-buy" and device in graph.buy):
                problems.append(f"{device}: {n} devices used, inventory has {cap}")
    if graph.max_devices is not None and sum(used.values()) > graph.max_devices:
        problems.append(f"{sum(used.values())} devices used, the rack limit (max_devices) is {graph.max_devices}")
    if graph.max_kw is not None:
        from terrazzo.plan.power import fleet_power_kw

        kw = fleet_power_kw(graph, a.chosen)
        if kw > graph.max_kw * (1 + TOLERANCE):
            problems.append(f"{kw:.2f} kW of device power, the limit (max_kw) is {graph.max_kw:g} kW")
    finish = _finish_times(graph, a)
    e2e = max(finish.values(), default=0.0)
    slack = 0.0
    if graph.deadline_s is not None and e2e > graph.deadline_s * (1 + TOLERANCE) + TOLERANCE:
        slack = e2e - graph.deadline_s
        if math.isinf(graph.penalty_usd_h_per_s):
            problems.append(f"end-to-end {e2e * 1e3:.1f} ms exceeds the {graph.deadline_s * 1e3:.4g} ms SLA")
    penalty = 0.0 if math.isinf(graph.penalty_usd_h_per_s) else graph.penalty_usd_h_per_s * slack
    return Verdict(fleet_usd_h(graph, used) + penalty, e2e, finish, tuple(problems), slack)


def _finish_times(graph: PlanningGraph, a: Assignment) -> dict[str, float]:
    """Longest path with per-visit latencies scaled by expected visits, transfers included."""
    preds: dict[str, list] = {}
    for e in graph.edges:
        if e.src in a.chosen and e.dst in a.chosen:
            preds.setdefault(e.dst, []).append(e)
    finish: dict[str, float] = {}

    def visit(name: str) -> float:
        if name in finish:
            return finish[name]
        finish[name] = 0.0  # guards against malformed cycles
        op, c = graph.op(name), a.candidate(graph, name)
        start = 0.0
        for e in preds.get(name, []):
            t = graph.transfer_s(e, a.candidate(graph, e.src).device, c.device)
            start = max(start, visit(e.src) + op.visits * t)
        finish[name] = start + op.visits * c.latency_s
        return finish[name]

    for name in a.chosen:
        visit(name)
    return finish
