"""The TCO placement MILP (paper §3.1, made exact and integral), solved by HiGHS.

Variables: x[o,c] ∈ {0,1} picks candidate c for op o; n[o,c] ∈ ℤ≥0 its replicas; z[g,v] ∈ {0,1} a
serving variant (aggregated or disaggregated) per LLM node; f[o] ≥ 0 finish times; t[e] ≥ 0 the
transfer time of edge e; s ≥ 0 end-to-end slack.

  min  Σ $/h(c)·n[o,c]  (+ λ·s)
  s.t. Σ_c x[o,c] = 1 (or = z[g,v] for variant ops),  Σ_v z[g,v] = 1
       u·rate(c)·n[o,c] ≥ demand(o)·x[o,c],  x[o,c] ≤ n[o,c] ≤ N(o,c)·x[o,c]
       t[e] ≥ L(e,d)·(w[u,d] − w[v,d]) and ≥ L(e,d)·(w[v,d] − w[u,d]) for every device type d,
         w[o,d] = Σ_{c on d} x[o,c]  (a crossing pays the slower NIC's time; a KV edge always pays)
       f[v] ≥ f[u] + visits(v)·(t[e] + Σ_c latency(c)·x[v,c]),  f[sink] ≤ deadline + s
       Σ devices(c)·n[o,c] over ops on d ≤ inventory(d)
Infeasible candidates (memory, TTFT, TBT) never get a column; they stay for explanations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from terrazzo.plan.check import Assignment, min_replicas
from terrazzo.plan.graph import OpCandidate, PlanningGraph
from terrazzo.plan.lp import INF, Model

Allow = Callable[[str, OpCandidate], bool]


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
    allowed = {
        o.name: [k for k, c in enumerate(o.candidates)
                 if c.feasible and c.device in graph.cluster_devices and (allow is None or allow(o.name, c))]
        for o in graph.ops
    }
    x: dict[tuple[str, int], int] = {}
    n: dict[tuple[str, int], int] = {}
    per_device: dict[str, dict[int, float]] = {}
    for o in graph.ops:
        for k in allowed[o.name]:
            c = o.candidates[k]
            cap = min_replicas(graph, o.name, c)
            x[o.name, k] = m.var(0.0, 0, 1, integer=True)
            n[o.name, k] = m.var(0.0 if graph.mode == "own-and-buy" else c.usd_h, 0, cap, integer=True)
            m.row({n[o.name, k]: 1.0, x[o.name, k]: -cap}, hi=0.0)  # replicas only on the chosen candidate
            m.row({n[o.name, k]: 1.0, x[o.name, k]: -1.0}, lo=0.0)  # at least one replica
            if graph.rate_per_s > 0 and not math.isinf(c.rate_per_s):
                demand = graph.rate_per_s * o.visits
                m.row({n[o.name, k]: graph.utilisation_cap * c.rate_per_s, x[o.name, k]: -demand}, lo=0.0)
            per_device.setdefault(c.device, {})[n[o.name, k]] = float(c.devices)
    in_group: dict[str, tuple[str, str]] = {}
    for g in graph.groups:
        z = {v: m.var(0.0, 0, 1, integer=True) for v in g.variants}
        m.row(dict.fromkeys(z.values(), 1.0), 1.0, 1.0)
        for v, ops in g.variants.items():
            if variants and g.node in variants and variants[g.node] != v:
                m.row({z[v]: 1.0}, hi=0.0)
            for op in ops:
                in_group[op] = (g.node, v)
                m.row({**{x[op, k]: 1.0 for k in allowed[op]}, z[v]: -1.0}, 0.0, 0.0)
    for o in graph.ops:
        if o.name not in in_group:
            m.row({x[o.name, k]: 1.0 for k in allowed[o.name]}, 1.0, 1.0)
    _fleet_cost(graph, m, per_device)
    _latency(graph, m, x, allowed)
    status, values, objective = m.solve(time_limit_s)
    if not values or status not in ("Optimal", "Time limit reached"):
        return Solution(status, None, math.inf)
    chosen = {
        name: (k, round(values[n[name, k]])) for (name, k), col in x.items() if values[col] > 0.5
    }
    return Solution(status, Assignment(chosen), objective)


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
    if graph.deadline_s is None:
        return
    finish = {o.name: m.var() for o in graph.ops}
    own = {
        o.name: {x[o.name, k]: o.visits * o.candidates[k].latency_s for k in allowed[o.name]} for o in graph.ops
    }
    for o in graph.ops:
        m.row({finish[o.name]: 1.0, **{col: -lat for col, lat in own[o.name].items()}}, lo=0.0)
    devices = sorted({c.device for o in graph.ops for k in allowed[o.name] for c in [o.candidates[k]]})
    for e in graph.edges:
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
    for o in graph.sinks():
        m.row({finish[o]: 1.0, slack: -1.0}, hi=graph.deadline_s)


def _sum(*parts: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out
