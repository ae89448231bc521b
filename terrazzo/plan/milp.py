"""The TCO placement MILP (paper §3.1, made exact and integral), solved by HiGHS.

Variables: x[o,c] ∈ {0,1} picks candidate c for op o; z[g,v] ∈ {0,1} a serving variant (aggregated
or disaggregated) per LLM node; f[o] ≥ 0 finish times; t[e] ≥ 0 the transfer time of edge e; s ≥ 0
end-to-end slack. A chosen candidate runs n(o,c) = ⌈demand(o) / (u·rate(c))⌉ replicas: more never
lowers cost or latency, so replicas are constants of the column rather than variables.

  min  Σ $/h(c)·n(o,c)·x[o,c]  (+ λ·s)
  s.t. Σ_c x[o,c] = 1 (or = z[g,v] for variant ops),  Σ_v z[g,v] = 1
       t[e] ≥ L(e,d)·(w[u,d] − w[v,d]) and ≥ L(e,d)·(w[v,d] − w[u,d]) for every device type d,
         w[o,d] = Σ_{c on d} x[o,c]  (a crossing pays the slower NIC's time; a KV edge always pays)
       f[v] ≥ f[u] + visits(v)·(t[e] + Σ_c latency(c)·x[v,c]),  f[sink] ≤ deadline + s
       Σ devices(c)·n(o,c)·x[o,c] over ops on d ≤ inventory(d)
       Σ power(o,c)·x[o,c] ≤ max_kw,  Σ devices(c)·n(o,c)·x[o,c] ≤ max_devices  (when the cluster sets them)
A first-token op's replicas also keep its percentile TTFT, queueing included, within the limit
(plan/queueing.py). Infeasible candidates (memory, TTFT, TBT) never get a column; they stay for
explanations. A data edge whose slowest transfer is under 1e-5 of the deadline is charged that worst
case as a constant instead of t[e]'s rows: conservative (the plan still passes the check) and it
keeps 1,000-op graphs tractable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from terrazzo.plan.check import Assignment, first_token_attainable, min_replicas
from terrazzo.plan.lp import INF, Model
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, non_dominated
from terrazzo.plan.power import op_power_w

Allow = Callable[[str, OpCandidate], bool]
NEGLIGIBLE_TRANSFER = 1e-5  # data transfers below this fraction of the deadline enter as worst-case constants


@dataclass(frozen=True)
class Solution:
    status: str
    assignment: Assignment | None
    objective_usd_h: float


def solve_milp(graph: PlanningGraph, allow: Allow | None = None, variants: dict[str, str] | None = None,
               time_limit_s: float = 60.0) -> Solution:
    """Optimal assignment, restricted to candidates `allow(op, cand)` accepts and to forced
    `variants` (node → variant) when given — the baselines are such restrictions."""
    m = Model()
    allowed = {o.name: _columns(graph, o.name, allow) for o in graph.ops}
    x: dict[tuple[str, int], int] = {}
    per_device: dict[str, dict[int, float]] = {}
    power_kw: dict[int, float] = {}
    for o in graph.ops:
        for k in allowed[o.name]:
            c = o.candidates[k]
            replicas = min_replicas(graph, o.name, c)
            cost = 0.0 if graph.mode == "own-and-buy" else c.usd_h * replicas
            x[o.name, k] = m.var(cost, 0, 1, integer=True)
            per_device.setdefault(c.device, {})[x[o.name, k]] = float(c.devices * replicas)
            power_kw[x[o.name, k]] = op_power_w(graph, o.name, c, replicas) / 1e3
    if graph.max_kw is not None:  # power limit, utilisation-weighted as the checker counts it (plan/power.py)
        m.row(power_kw, hi=graph.max_kw)
    if graph.max_devices is not None:
        m.row(_sum(*per_device.values()), hi=graph.max_devices)
    for g in graph.groups:
        z = {v: m.var(0.0, 0, 1, integer=True) for v in g.variants}
        m.row(dict.fromkeys(z.values(), 1.0), 1.0, 1.0)
        for v, ops in g.variants.items():
            if variants and g.node in variants and variants[g.node] != v:
                m.row({z[v]: 1.0}, hi=0.0)
            for op in ops:
                m.row({**{x[op, k]: 1.0 for k in allowed[op]}, z[v]: -1.0}, 0.0, 0.0)
    grouped = {op for g in graph.groups for ops in g.variants.values() for op in ops}
    for o in graph.ops:
        if o.name not in grouped:
            m.row({x[o.name, k]: 1.0 for k in allowed[o.name]}, 1.0, 1.0)
    _fleet_cost(graph, m, per_device)
    _latency(graph, m, x, allowed)
    status, values, objective = m.solve(time_limit_s)
    if not values or status not in ("Optimal", "Time limit reached"):
        return Solution(status, None, math.inf)
    chosen = {
        name: (k, min_replicas(graph, name, graph.op(name).candidates[k]))
        for (name, k), col in x.items() if values[col] > 0.5
    }
    return Solution(status, Assignment(chosen), objective)


def _columns(graph: PlanningGraph, op: str, allow: Allow | None) -> list[int]:
    """Candidates worth a column: feasible, allowed, in the cluster, and not beaten on every count
    (latency, fleet $/h, fleet devices) by another on the same device type at this demand."""
    o = graph.op(op)
    ok = [k for k, c in enumerate(o.candidates)
          if c.feasible and c.device in graph.cluster_devices and (allow is None or allow(op, c))
          and first_token_attainable(graph, op, c)]

    def costs(k: int) -> tuple[float, ...]:
        c = o.candidates[k]
        n = min_replicas(graph, op, c)
        kw = (op_power_w(graph, op, c, n),) if graph.max_kw is not None else ()
        return (c.latency_s, c.usd_h * n, float(c.devices * n), *kw)

    return non_dominated(ok, lambda k: o.candidates[k].device, costs)


def _fleet_cost(graph: PlanningGraph, m: Model, per_device: dict[str, dict[int, float]]) -> None:
    """Inventory caps; in own-and-buy mode, owned devices cost power only and bought ones full TCO."""
    for device, cols in per_device.items():
        cap = graph.inventory.get(device, 0)
        if graph.mode == "inventory":
            m.row(cols, hi=cap)
        elif graph.mode == "own-and-buy":
            cost = graph.device_costs[device]
            used = m.var(cost.power_usd_h + cost.host_usd_h)
            m.row({**cols, used: -1.0}, 0.0, 0.0)
            bought = m.var(cost.capex_usd_h, 0, INF if device in graph.buy else 0)
            m.row({bought: 1.0, used: -1.0}, lo=-cap)  # bought ≥ used − owned


def _latency(graph: PlanningGraph, m: Model, x: dict[tuple[str, int], int], allowed: dict[str, list[int]]) -> None:
    if graph.deadline_s is None or _slowest_e2e(graph, allowed) <= graph.deadline_s:
        return  # no path can miss the deadline: latency rows would only slow the solver down
    finish = {o.name: m.var() for o in graph.ops}
    own = {
        o.name: {x[o.name, k]: o.visits * o.candidates[k].latency_s for k in allowed[o.name]} for o in graph.ops
    }
    for o in graph.ops:
        m.row({finish[o.name]: 1.0, **{col: -lat for col, lat in own[o.name].items()}}, lo=0.0)
    on = {o.name: {o.candidates[k].device for k in allowed[o.name]} for o in graph.ops}
    negligible_s = NEGLIGIBLE_TRANSFER * graph.deadline_s
    for e in graph.edges:
        devices = sorted(on[e.src] | on[e.dst])
        worst = max((graph.link_latency_s + e.data_bytes / graph.link_bytes_s[d] for d in devices), default=0.0)
        if e.kind == "data" and (len(devices) <= 1 or worst <= negligible_s):
            # one device type on both ends: never crosses; or too small to matter: charged at its worst
            const = 0.0 if len(devices) <= 1 else worst
            visits = graph.op(e.dst).visits
            row = {finish[e.dst]: 1.0, finish[e.src]: -1.0, **{col: -lat for col, lat in own[e.dst].items()}}
            m.row(row, lo=visits * const)
            continue
        t = m.var()
        for d in devices:
            w_src = {x[e.src, k]: 1.0 for k in allowed[e.src] if graph.op(e.src).candidates[k].device == d}
            w_dst = {x[e.dst, k]: 1.0 for k in allowed[e.dst] if graph.op(e.dst).candidates[k].device == d}
            lat = graph.link_latency_s + e.data_bytes / graph.link_bytes_s[d]
            if e.kind == "kv":  # prefill and decode are separate pools: the KV always moves
                m.row({t: 1.0, **{c: -lat for c in w_src}}, lo=0.0)
                m.row({t: 1.0, **{c: -lat for c in w_dst}}, lo=0.0)
            else:
                m.row(_sum({t: 1.0}, {c: -lat for c in w_src}, {c: lat for c in w_dst}), lo=0.0)
                m.row(_sum({t: 1.0}, {c: -lat for c in w_dst}, {c: lat for c in w_src}), lo=0.0)
        visits = graph.op(e.dst).visits
        row = {finish[e.dst]: 1.0, finish[e.src]: -1.0, t: -visits}
        m.row(_sum(row, {col: -lat for col, lat in own[e.dst].items()}), lo=0.0)
    slack = m.var(0.0 if math.isinf(graph.penalty_usd_h_per_s) else graph.penalty_usd_h_per_s,
                  0.0, 0.0 if math.isinf(graph.penalty_usd_h_per_s) else INF)
    for sink in graph.sinks():
        m.row({finish[sink]: 1.0, slack: -1.0}, hi=graph.deadline_s)


def _sum(*parts: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _slowest_e2e(graph: PlanningGraph, allowed: dict[str, list[int]]) -> float:
    """Longest path with every op on its slowest column and every edge at its slowest transfer."""
    slow_link = min(graph.link_bytes_s.values())
    finish: dict[str, float] = {}
    preds: dict[str, list] = {}
    for e in graph.edges:
        preds.setdefault(e.dst, []).append(e)

    def visit(name: str) -> float:
        if name not in finish:
            finish[name] = 0.0
            op = graph.op(name)
            own = max((op.candidates[k].latency_s for k in allowed[name]), default=0.0)
            start = max((visit(e.src) + op.visits * (graph.link_latency_s + e.data_bytes / slow_link)
                         for e in preds.get(name, [])), default=0.0)
            finish[name] = start + op.visits * own
        return finish[name]

    return max((visit(o.name) for o in graph.ops), default=0.0)
