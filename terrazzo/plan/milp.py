"""The TCO placement MILP over pools (paper §3.1, made exact and integral), solved by HiGHS.

Pools are those of plan/fleet_model.py: a shared pool per (device, parallelism, engine) for non-LLM
ops, a dedicated one per LLM op and configuration.

  x[o,c] ∈ {0,1}   op o wholly on candidate c (every op unless it may be split)
  N[p] ∈ ℤ≥0       replicas of shared pool p:  Σ_(o,c)∈p load(o,c)·x[o,c] ≤ u·N[p],  N[p] ≥ x[o,c]
  a dedicated pool of an unsplit op has the constant n(o,c) = its minimum replicas (more never lowers
  cost or latency), so its $/h is a constant of the column;
  split ops (when an inventory binds, `PlanningGraph.splits`): share y[o,c] ∈ [0,1] with Σ_c y = 1,
  used u[o,c] ≥ y[o,c], and integer replicas per pool: y·λ ≤ cap(n) where cap is the throughput
  under the cap and, for a first-token op, the largest rate whose percentile TTFT meets the limit —
  not linear in n, so one binary per replica count (b[o,c,j], n = Σ j·b).
  z[g,v] ∈ {0,1}   one serving variant per LLM node

  min  Σ_p $/h(p)·replicas(p)  (+ λ·s)
  s.t. latency: f[v] ≥ f[u] + visits(v)·(t[e] + L[v]), L[v] ≥ latency(c)·used[v,c], f[sink] ≤ deadline + s;
       t[e] ≥ L(e,d)·(w[u,d] − s[v,d]) and ≥ L(e,d)·(w[v,d] − s[u,d]) for every device type d, where
       w[o,d] says o uses d and s[o,d] that o runs wholly on d (a KV edge always pays);
       Σ devices over pools on d ≤ inventory(d)  (own-and-buy: bought ≥ used − owned);
       when the cluster sets them: Σ devices ≤ max_devices, and device power ≤ max_kw, where power is
       idle W × devices held + (TDP − idle) × busy devices (share · demand / rate × devices per replica),
       the utilisation-weighted rule of plan/power.py.
Infeasible candidates (memory, TTFT, TBT) never get a column; they stay for explanations. On graphs
over LARGE_GRAPH ops, a data edge whose slowest transfer is under 1e-5 of the deadline is charged that
worst case as a constant instead of t[e]'s rows: conservative (the plan still passes the check).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from terrazzo.plan.fleet_model import (
    TOLERANCE,
    Assignment,
    PoolKey,
    Share,
    capacity_per_s,
    capacity_shares,
    demand_per_s,
    first_token_attainable,
    load_of,
    min_replicas,
    pool_key,
    queues_for_first_token,
)
from terrazzo.plan.lp import INF, Model
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp, is_dedicated, non_dominated
from terrazzo.plan.power import pool_power_w

Allow = Callable[[str, OpCandidate], bool]
NEGLIGIBLE_TRANSFER = 1e-5  # on large graphs, data transfers below this fraction of the deadline enter as constants
LARGE_GRAPH = 200  # ops


@dataclass(frozen=True)
class Solution:
    status: str
    assignment: Assignment | None
    objective_usd_h: float
    gap: float = 0.0  # HiGHS's relative MIP gap: 0 when proven optimal
    solve_s: float = 0.0

    @property
    def proven_optimal(self) -> bool:
        return self.status == "Optimal"


@dataclass
class _Op:
    """An op's columns: `share[k]` its share of candidate k (a {column: coeff} expression), `used[k]`
    whether k carries any, and for split ops the replicas per candidate."""

    op: PlanOp
    cols: list[int]
    split: bool
    share: dict[int, dict[int, float]]
    used: dict[int, dict[int, float]]
    replicas: dict[int, dict[int, float]]


def solve_milp(graph: PlanningGraph, allow: Allow | None = None, variants: dict[str, str] | None = None,
               time_limit_s: float = 60.0, start: Assignment | None = None) -> Solution:
    """Optimal assignment, restricted to candidates `allow(op, cand)` accepts and to forced `variants`
    (node → variant) when given — the baselines are such restrictions. `start` is a warm start."""
    m = Model()
    ops: dict[str, _Op] = {}
    per_device: dict[str, dict[int, float]] = {}
    shared: dict[PoolKey, list[tuple[int, float]]] = {}
    pool_price: dict[PoolKey, OpCandidate] = {}
    shared_used: dict[PoolKey, list[int]] = {}  # split ops' "uses this pool" binaries
    split_steps: set[int] = set()  # split ops' share-step columns
    own_and_buy = graph.mode == "own-and-buy"

    def add_devices(device: str, expr: dict[int, float]) -> None:
        row = per_device.setdefault(device, {})
        for col, v in expr.items():
            row[col] = row.get(col, 0.0) + v

    for o in graph.ops:
        cols = _columns(graph, o, allow)
        split = graph.splits and len(cols) > 1
        rec = _Op(o, cols, split, {}, {}, {})
        ops[o.name] = rec
        for k in cols:
            c = o.candidates[k]
            if split and not is_dedicated(o.kind):  # shares m/Q of a shared pool, m ∈ 0..Q
                q = graph.share_steps
                mk, u = m.var(0.0, 0, q, integer=True), m.var(0.0, 0, 1, integer=True)
                m.row({mk: 1.0 / q, u: -1.0}, hi=0.0)
                rec.share[k], rec.used[k] = {mk: 1.0 / q}, {u: 1.0}
                key = pool_key(o, c)
                shared.setdefault(key, []).append((mk, load_of(graph, o.name, c, 1.0) / q))
                split_steps.add(mk)
                shared_used.setdefault(key, []).append(u)
                pool_price.setdefault(key, c)
                continue
            if not split:
                n = min_replicas(graph, o.name, c) if is_dedicated(o.kind) else 0
                x = m.var(0.0 if own_and_buy or not n else c.usd_h * n, 0, 1, integer=True)
                rec.share[k] = rec.used[k] = {x: 1.0}
                if is_dedicated(o.kind):
                    add_devices(c.device, {x: float(c.devices * n)})
                else:
                    key = pool_key(o, c)
                    shared.setdefault(key, []).append((x, load_of(graph, o.name, c, 1.0)))
                    pool_price.setdefault(key, c)
                continue
            y, u = m.var(0.0, 0, 1), m.var(0.0, 0, 1, integer=True)
            m.row({y: 1.0, u: -1.0}, hi=0.0)
            rec.share[k], rec.used[k] = {y: 1.0}, {u: 1.0}
            top = min_replicas(graph, o.name, c)
            lam = demand_per_s(graph, o.name)
            if queues_for_first_token(o, c) and lam > 0:
                bs = {m.var(0.0 if own_and_buy else c.usd_h * j, 0, 1, integer=True): j for j in range(1, top + 1)}
                m.row(dict.fromkeys(bs, 1.0), hi=1.0)
                m.row({**dict.fromkeys(bs, 1.0), u: -1.0}, lo=0.0)
                m.row({y: 1.0, **{b: -min(capacity_per_s(graph, o.name, c, j) / lam, 1.0) for b, j in bs.items()}},
                      hi=0.0)
                rec.replicas[k] = {b: float(j) for b, j in bs.items()}
            else:
                n = m.var(0.0 if own_and_buy else c.usd_h, 0, top, integer=True)
                m.row({n: 1.0, u: -1.0}, lo=0.0)
                if lam > 0:
                    per = graph.utilisation_cap * c.rate_per_s / lam
                    m.row({y: 1.0, n: -per}, hi=per * TOLERANCE)
                rec.replicas[k] = {n: 1.0}
            add_devices(c.device, {col: v * c.devices for col, v in rec.replicas[k].items()})
    for key, members in shared.items():
        price = pool_price[key]
        n = m.var(0.0 if own_and_buy else price.usd_h, 0, INF, integer=True)
        m.row({**{x: load / graph.utilisation_cap for x, load in members}, n: -1.0}, hi=TOLERANCE)
        used = shared_used.get(key, [])
        for u in used:  # a split op's share: the pool has a replica if it carries any
            m.row({n: 1.0, u: -1.0}, lo=0.0)
        for x, _ in members:
            if x not in split_steps:  # a whole-op column: the pool has a replica if it is chosen
                m.row({n: 1.0, x: -1.0}, lo=0.0)
        add_devices(key.device, {n: float(price.devices)})
    _placement(graph, m, ops, variants)
    _fleet_cost(graph, m, per_device)
    _limits(graph, m, ops, per_device)
    _latency(graph, m, ops)
    warm = _warm(graph, ops, start) if start is not None else None
    status, values, objective = m.solve(time_limit_s, start=warm)
    if not values or status not in ("Optimal", "Time limit reached"):
        return Solution(status, None, math.inf, m.mip_gap, m.solve_s)
    placements: dict[str, tuple[Share, ...]] = {}
    for name, rec in ops.items():
        if rec.split and not is_dedicated(rec.op.kind):
            q = graph.share_steps
            steps = {k: round(sum(values[c] * v for c, v in rec.share[k].items()) * q) for k in rec.cols}
            placements[name] = tuple(Share(k, n / q) for k, n in steps.items() if n > 0)
            continue
        if rec.split:
            reps = {k: round(sum(values[c] * v for c, v in rec.replicas[k].items())) for k in rec.cols}
            reps = {k: n for k, n in reps.items() if n > 0}
            if reps:
                placements[name] = capacity_shares(graph, name, reps)
            continue
        picked = [k for k in rec.cols if sum(values[c] for c in rec.share[k]) > 0.5]
        if picked:
            placements[name] = (Share(picked[0], 1.0),)
    return Solution(status, Assignment(placements), objective, m.mip_gap, m.solve_s)


def _columns(graph: PlanningGraph, o: PlanOp, allow: Allow | None) -> list[int]:
    """Candidates worth a column: feasible, allowed, in the cluster, attainable, and not beaten by another
    in the same pool class at this demand on every count the MILP reads. A dedicated pool of an unsplit
    op: latency, fleet $/h and devices at its own replica count (exact: the column's whole effect); a
    shared pool: latency and load (same pool, same price). Split ops keep the demand-free front that
    `planning_graph.prune` left."""
    key = (o.candidates, o.visits, o.first_token_limit_s, o.work_tail_ratio, o.work_scv, o.arrival_scv, o.hold_scv,
           o.arrival_clump, o.kind, graph.rate_per_s, graph.utilisation_cap, graph.percentile, graph.cluster_devices,
           graph.splits)
    if allow is not None:
        return _front(graph, o, allow)
    front = _FRONTS.get(key)
    if front is None:
        front = _FRONTS[key] = _front(graph, o, None)
        if len(_FRONTS) > 4096:
            _FRONTS.clear()
    return front


_FRONTS: dict[tuple, list[int]] = {}  # an op's front depends on its own fields and the demand: shared by twins


def _front(graph: PlanningGraph, o: PlanOp, allow: Allow | None) -> list[int]:
    ok = [k for k, c in enumerate(o.candidates)
          if c.feasible and c.device in graph.cluster_devices and first_token_attainable(graph, o.name, c)
          and (math.isfinite(load_of(graph, o.name, c, 1.0)) or is_dedicated(o.kind))
          and (allow is None or allow(o.name, c))]
    if is_dedicated(o.kind):
        if graph.splits:
            return ok

        def own(k: int) -> tuple[float, ...]:
            c = o.candidates[k]
            n = min_replicas(graph, o.name, c)
            kw = (pool_power_w(graph, c, n, load_of(graph, o.name, c, 1.0)),) if graph.max_kw is not None else ()
            return (c.latency_s, c.usd_h * n, float(c.devices * n), *kw)

        return non_dominated(ok, lambda k: o.candidates[k].device, own)

    def in_pool(k: int) -> tuple[float, ...]:
        c = o.candidates[k]
        return (c.latency_s, load_of(graph, o.name, c, 1.0))

    return non_dominated(ok, lambda k: pool_key(o, o.candidates[k]).name, in_pool)


def _limits(graph: PlanningGraph, m: Model, ops: dict[str, _Op], per_device: dict[str, dict[int, float]]) -> None:
    """Rack (max_devices) and power (max_kw) limits, counted as the checker counts them."""
    if graph.max_devices is not None:
        m.row(_sum(*per_device.values()), hi=graph.max_devices)
    if graph.max_kw is None:
        return
    kw: dict[int, float] = {}
    for device, row in per_device.items():  # every device held draws its idle power
        curve = graph.power.get(device)
        if curve is not None:
            kw = _sum(kw, {col: v * curve.idle_w / 1e3 for col, v in row.items()})
    for name, rec in ops.items():  # and the busy share of the span to TDP
        for k in rec.cols:
            c = rec.op.candidates[k]
            curve = graph.power.get(c.device)
            if curve is not None:
                busy_kw = load_of(graph, name, c, 1.0) * c.devices * (curve.tdp_w - curve.idle_w) / 1e3
                kw = _sum(kw, {col: v * busy_kw for col, v in rec.share[k].items()})
    m.row(kw, hi=graph.max_kw)


def _placement(graph: PlanningGraph, m: Model, ops: dict[str, _Op], variants: dict[str, str] | None) -> None:
    grouped = set()
    for g in graph.groups:
        z = {v: m.var(0.0, 0, 1, integer=True) for v in g.variants}
        m.row(dict.fromkeys(z.values(), 1.0), 1.0, 1.0)
        for v, names in g.variants.items():
            if variants and g.node in variants and variants[g.node] != v:
                m.row({z[v]: 1.0}, hi=0.0)
            for op in names:
                grouped.add(op)
                m.row(_sum(*ops[op].share.values(), {z[v]: -1.0}), 0.0, 0.0)
    for name, rec in ops.items():
        if name not in grouped:
            m.row(_sum(*rec.share.values()), 1.0, 1.0)


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


def _latency(graph: PlanningGraph, m: Model, ops: dict[str, _Op]) -> None:
    if graph.deadline_s is None or _slowest_e2e(graph, ops) <= graph.deadline_s:
        return  # no path can miss the deadline: latency rows would only slow the solver down
    finish = {name: m.var() for name in ops}
    own: dict[str, dict[int, float]] = {}
    uses: dict[str, dict[str, dict[int, float]]] = {}  # op → device → "uses d" expression
    whole: dict[str, dict[str, dict[int, float]]] = {}  # op → device → "wholly on d" expression
    for name, rec in ops.items():
        o = rec.op
        by_device: dict[str, list[int]] = {}
        for k in rec.cols:
            by_device.setdefault(o.candidates[k].device, []).append(k)
        if not rec.split:
            own[name] = _sum(*({c: o.visits * o.candidates[k].latency_s for c in rec.used[k]} for k in rec.cols))
            uses[name] = {d: _sum(*(rec.used[k] for k in ks)) for d, ks in by_device.items()}
            whole[name] = uses[name]
            continue
        lat = m.var()
        for k in rec.cols:
            m.row({lat: 1.0, **{c: -o.visits * o.candidates[k].latency_s for c in rec.used[k]}}, lo=0.0)
        own[name] = {lat: 1.0}
        uses[name], whole[name] = {}, {}
        n_dev = len(by_device)
        for d, ks in by_device.items():
            w = m.var(0.0, 0, 1, integer=True)
            for k in ks:
                m.row({w: 1.0, **{c: -1.0 for c in rec.used[k]}}, lo=0.0)
            uses[name][d] = {w: 1.0}
        for d in by_device:
            s = m.var(0.0, 0, 1, integer=True)
            m.row(_sum({s: 1.0}, _scale(uses[name][d], -1.0)), hi=0.0)  # wholly on d only if it uses d
            others = _sum(*(uses[name][e] for e in by_device if e != d))
            m.row(_sum(others, {s: float(n_dev)}), hi=float(n_dev))
            whole[name][d] = {s: 1.0}
    for name in ops:
        m.row(_sum({finish[name]: 1.0}, _scale(own[name], -1.0)), lo=0.0)
    negligible_s = NEGLIGIBLE_TRANSFER * graph.deadline_s if len(graph.ops) > LARGE_GRAPH else -1.0
    for e in graph.edges:
        if e.src not in ops or e.dst not in ops:
            continue
        devices = sorted(set(uses[e.src]) | set(uses[e.dst]))
        worst = max((graph.link_latency_s + e.data_bytes / graph.link_bytes_s[d] for d in devices), default=0.0)
        visits = graph.op(e.dst).visits
        base = _sum({finish[e.dst]: 1.0, finish[e.src]: -1.0}, _scale(own[e.dst], -1.0))
        if e.kind == "data" and (len(devices) <= 1 or worst <= negligible_s):
            # one device type on both ends: never crosses; or too small to matter: charged at its worst
            m.row(base, lo=visits * (0.0 if len(devices) <= 1 else worst))
            continue
        t = m.var()
        for d in devices:
            link = graph.link_latency_s + e.data_bytes / graph.link_bytes_s[d]
            w_src, w_dst = uses[e.src].get(d, {}), uses[e.dst].get(d, {})
            if e.kind == "kv":  # prefill and decode are separate pools: the KV always moves
                m.row(_sum({t: 1.0}, _scale(w_src, -link)), lo=0.0)
                m.row(_sum({t: 1.0}, _scale(w_dst, -link)), lo=0.0)
            else:
                m.row(_sum({t: 1.0}, _scale(w_src, -link), _scale(whole[e.dst].get(d, {}), link)), lo=0.0)
                m.row(_sum({t: 1.0}, _scale(w_dst, -link), _scale(whole[e.src].get(d, {}), link)), lo=0.0)
        m.row(_sum(base, {t: -visits}), lo=0.0)
    slack = m.var(0.0 if math.isinf(graph.penalty_usd_h_per_s) else graph.penalty_usd_h_per_s,
                  0.0, 0.0 if math.isinf(graph.penalty_usd_h_per_s) else INF)
    for sink in graph.sinks():
        if sink in finish:
            m.row({finish[sink]: 1.0, slack: -1.0}, hi=graph.deadline_s)


def _warm(graph: PlanningGraph, ops: dict[str, _Op], a: Assignment) -> dict[int, float] | None:
    """A start vector for the unsplit columns of `a` (other columns are left for HiGHS to complete)."""
    out: dict[int, float] = {}
    for name, shares in a.placements.items():
        rec = ops.get(name)
        if rec is None or rec.split or len(shares) != 1 or shares[0].candidate not in rec.share:
            return None
        for col in rec.share[shares[0].candidate]:
            out[col] = 1.0
    return out


def _scale(expr: dict[int, float], f: float) -> dict[int, float]:
    return {k: v * f for k, v in expr.items()}


def _sum(*parts: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _slowest_e2e(graph: PlanningGraph, ops: dict[str, _Op]) -> float:
    """Longest path with every op on its slowest column and every edge at its slowest transfer."""
    slow_link = min(graph.link_bytes_s.values())
    finish: dict[str, float] = {}
    preds: dict[str, list] = {}
    for e in graph.edges:
        preds.setdefault(e.dst, []).append(e)

    def visit(name: str) -> float:
        if name not in finish:
            finish[name] = 0.0
            rec = ops[name]
            own = max((rec.op.candidates[k].latency_s for k in rec.cols), default=0.0)
            start = max((visit(e.src) + rec.op.visits * (graph.link_latency_s + e.data_bytes / slow_link)
                         for e in preds.get(name, [])), default=0.0)
            finish[name] = start + rec.op.visits * own
        return finish[name]

    return max((visit(o.name) for o in graph.ops), default=0.0)
