"""The planner's yardstick for exactness: the cheapest assignment that passes the independent checker,
found by enumeration (with branch-and-bound cuts that are safe because pool costs only grow as ops are
added). Never uses the MILP or the pruning it checks. Shared by tests/test_plan_exact.py and
bench/bench_plan.py."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from terrazzo.plan.check import _shares_problems, check, finish_times
from terrazzo.plan.fleet_model import (
    Assignment,
    Share,
    capacity_per_s,
    capacity_shares,
    demand_per_s,
    devices_used,
    fleet_usd_h,
    min_replicas,
    size_pools,
)
from terrazzo.plan.planning_graph import PlanningGraph, is_dedicated

MAX_SPLIT_REPLICAS = 6  # a split op's replicas per candidate, enumerated 0..this (tests keep loads small)


def options(graph: PlanningGraph, op: str) -> Iterator[tuple[Share, ...]]:
    """Every way to place `op`: wholly on each candidate (infeasible ones included, for the checker to
    reject), and in a graph that splits: for a dedicated op every replica vector over its feasible
    candidates with shares proportional to capacity (the router's rule), for any other op every split of
    its demand in steps of 1/share_steps."""
    o = graph.op(op)
    for k in range(len(o.candidates)):
        yield (Share(k, 1.0),)
    if not graph.splits:
        return
    ok = [k for k, c in enumerate(o.candidates) if c.feasible and c.device in graph.cluster_devices]
    if len(ok) < 2:
        return
    if not is_dedicated(o.kind):  # shares in steps of 1/share_steps over two or more candidates
        q = graph.share_steps
        for steps in itertools.product(range(q + 1), repeat=len(ok)):
            if sum(steps) == q and sum(1 for n in steps if n) >= 2:
                yield tuple(Share(k, n / q) for k, n in zip(ok, steps, strict=True) if n)
        return
    lam = demand_per_s(graph, op)
    top = {k: min(min_replicas(graph, op, o.candidates[k]), MAX_SPLIT_REPLICAS) for k in ok}
    for vec in itertools.product(*(range(top[k] + 1) for k in ok)):
        reps = {k: n for k, n in zip(ok, vec, strict=True) if n > 0}
        if len(reps) < 2:
            continue
        if sum(capacity_per_s(graph, op, o.candidates[k], n) for k, n in reps.items()) < lam:
            continue
        shares = capacity_shares(graph, op, reps)
        if len(shares) >= 2:
            yield shares


def partial_cost(graph: PlanningGraph, placements: dict[str, tuple[Share, ...]]) -> float:
    pools = size_pools(graph, Assignment(placements))
    return fleet_usd_h(graph, devices_used(graph, pools), pools)


def _late(graph: PlanningGraph, placed: dict[str, tuple[Share, ...]]) -> bool:
    """Whether the placed ops alone already miss a hard deadline (more ops only add latency)."""
    if graph.deadline_s is None or not math.isinf(graph.penalty_usd_h_per_s):
        return False
    e2e = max(finish_times(graph, Assignment(placed)).values(), default=0.0)
    return e2e > graph.deadline_s * (1 + 1e-6) + 1e-6


def _topological(graph: PlanningGraph, ops: list[str]) -> list[str]:
    preds: dict[str, set[str]] = {op: set() for op in ops}
    for e in graph.edges:
        if e.src in preds and e.dst in preds:
            preds[e.dst].add(e.src)
    out: list[str] = []
    while len(out) < len(ops):
        ready = [op for op in ops if op not in out and preds[op] <= set(out)]
        out.extend(ready or [op for op in ops if op not in out][:1])
    return out


def brute_force(graph: PlanningGraph) -> tuple[float, Assignment | None]:
    """Cheapest assignment that passes `check`, by enumeration over serving variants and placements, in
    topological order, cutting a branch whose placed ops already cost more than the best found or already
    miss the deadline (both only grow as ops are added)."""
    grouped = {o for g in graph.groups for ops in g.variants.values() for o in ops}
    free = [o.name for o in graph.ops if o.name not in grouped]
    best: tuple[float, Assignment | None] = (math.inf, None)
    for pick in itertools.product(*(list(g.variants.values()) for g in graph.groups)):
        active = free + [o for ops in pick for o in ops]
        # an option the checker rejects on its own (infeasible, outside the cluster, TTFT unattainable even
        # idle) fails every completion: leave it out of the enumeration by the checker's own rule
        opts = {op: sorted((s for s in options(graph, op) if not _shares_problems(graph, op, s)),
                           key=lambda s, op=op: partial_cost(graph, {op: s})) for op in active}
        order = _topological(graph, active)

        def walk(i: int, placed: dict[str, tuple[Share, ...]], order: list[str] = order,
                 opts: dict[str, list[tuple[Share, ...]]] = opts) -> None:
            nonlocal best
            if i == len(order):
                v = check(graph, Assignment(dict(placed)))
                if v.ok and v.usd_h < best[0] - 1e-12:
                    best = (v.usd_h, Assignment(dict(placed)))
                return
            op = order[i]
            for s in opts[op]:
                placed[op] = s
                if partial_cost(graph, placed) <= best[0] * (1 + 1e-9) + 1e-12:
                    if not _late(graph, placed):
                        walk(i + 1, placed)
                elif partial_cost(graph, {op: s}) > best[0] * (1 + 1e-9) + 1e-12:
                    break  # sorted by own cost: every later option alone already costs more
            placed.pop(op, None)

        walk(0, {})
    return best
