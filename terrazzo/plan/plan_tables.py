"""Plan tables a fleet owner can read: latencies labelled with what they are (TTFT and TBT at the SLA's
percentile or per token, the mean time per visit, E2E mean and simulated percentile), $/h per op that
adds up to the headline, and every candidate the planner considered (`plan --candidates`)."""

from __future__ import annotations

import math

from rich.table import Table

from terrazzo.plan.check import first_token_tail_s, min_replicas
from terrazzo.plan.planner import Plan
from terrazzo.plan.planning_graph import PlanningGraph


def _ms(s: float | None) -> str:
    return "-" if s is None or not math.isfinite(s) else f"{s * 1e3:,.1f}"


def _s(s: float) -> str:
    return f"{s:,.2f} s" if s >= 1 else f"{s * 1e3:,.0f} ms"


def plan_table(plan: Plan) -> Table:
    """Pools, the unit of the fleet, with their share of the headline $/h (the column sums to it)."""
    t = Table("pool", "device", "tp×pp", "engine", "batch", "replicas", "ops (share)", "$/h",
              title=f"plan for {plan.agent} at {plan.rate_per_s:g} req/s")
    shares = plan.pool_usd_h()
    for p in plan.pools:
        ops = ", ".join(m.op if m.share > 1 - 1e-9 else f"{m.op} ({m.share:.0%})" for m in p.ops)
        engine = f"{p.engine} {p.engine_version}".strip()  # the engine it was priced on
        t.add_row(p.name, p.device, f"{p.tp}×{p.pp}", engine, str(p.batch), str(p.replicas), ops,
                  f"{shares[p.name]:.2f}")
    t.caption = caption(plan)
    return t


def ops_table(plan: Plan) -> Table:
    """Per op, latencies labelled with what they are: TTFT at the SLA's percentile (queueing included),
    TBT at the pool's batch, and the mean time per visit (a prefill, a whole decode, a tool call)."""
    pct = f"p{plan.percentile:g}"
    t = Table("op", "pool", "visits", f"TTFT {pct} ms", "TBT ms", "mean ms/visit", "$/h", title="latency per op")
    shares = plan.op_usd_h()
    for p in plan.ops:
        c = p.candidate
        pools = ", ".join(q.pool if q.share > 1 - 1e-9 else f"{q.pool} ({q.share:.0%})" for q in p.placements)
        t.add_row(p.name, pools, f"{p.visits:.3g}", _ms(p.ttft_at_sla_s), _ms(c.tbt_s), _ms(p.latency_s),
                  f"{shares[p.name]:.2f}")
    return t


def caption(plan: Plan) -> str:
    pct = f"p{plan.percentile:g}"
    sla = f" (SLA {pct} ≤ {_s(plan.deadline_s)})" if plan.deadline_s else ""
    sim = ""
    if plan.verification:
        last = plan.verification[-1]
        sim = f" · E2E {pct} {_s(last['e2e_at_sla_s'])} simulated"
    rows = " (sum of the keep-or-buy rows)" if plan.fleet is not None else ""
    solver = f" · solver {plan.solver_status} (gap {plan.solver_gap:.2%})"
    return (f"E2E mean {_s(plan.e2e_latency_s)} planned{sim}{sla} · TCO ${plan.usd_h:.2f}/h{rows} · "
            f"${plan.usd_per_request * 1e3:.4f} per 1k requests · ${plan.usd_per_m_tokens:.3f}/M output tokens · "
            f"{plan.power_kw:.1f} kW device power, {plan.energy_j_per_request:,.0f} J/request "
            f"(utilisation-weighted, × PUE){solver}")


def candidates_table(graph: PlanningGraph) -> Table:
    """Every candidate of every op, in the cluster or not: configuration, $/h per replica and for the
    demand, TTFT at the SLA's percentile (idle pool) and TBT, and feasible or the reason not."""
    pct = f"p{graph.percentile:g}"
    t = Table("op", "device", "tp×pp", "batch", "$/h per replica", "replicas", "$/h at demand", f"TTFT {pct} ms",
              "TBT ms", "time per visit ms", "feasible", title="candidates considered")
    for o in graph.ops:
        for c in sorted(o.candidates, key=lambda c: (c.device, c.tp, c.pp, c.batch)):
            if c.device not in graph.cluster_devices:
                verdict = f"[dim]not in the cluster[/] ({c.reason})" if c.reason else "[dim]not in the cluster[/]"
            elif not c.feasible:
                verdict = f"[red]no[/]: {c.reason}"
            else:
                verdict = "[green]yes[/]"
            n = min_replicas(graph, o.name, c) if c.feasible else None
            ttft = first_token_tail_s(graph, o.name, c) if c.first_token_s is not None else None
            t.add_row(o.name, c.device, f"{c.tp}×{c.pp}", str(c.batch), f"{c.usd_h:.2f}",
                      str(n) if n is not None else "-", f"{c.usd_h * n:.2f}" if n is not None else "-",
                      _ms(ttft), _ms(c.tbt_s), _ms(c.latency_s), verdict)
        t.add_section()
    return t


def kv_table(plan: Plan) -> Table:
    """Per reusing edge (`--explain`): the policy the MILP chose, the tokens it reuses per hit, the tier the
    prefix waits in, and the $/h it saves against recomputing that prefix (everything else as planned)."""
    t = Table("op", "reusing edge", "choice", "tokens reused", "new tokens", "hit rate", "hold", "tier",
              "transfer back ms", "saving vs recompute $/h", title="KV reuse per edge")
    for op, kv in plan.kv.items():
        saving = kv.get("saving_usd_h")
        t.add_row(op, kv["edge"], kv["policy"], f"{kv['prefix_tokens']:,.0f}", f"{kv['new_tokens']:,.0f}",
                  f"{kv['hit_rate']:.0%}", _s(kv["hold_s"]), kv["tier"], _ms(kv["transfer_s"]),
                  "-" if saving is None else f"{saving:,.2f}")
    return t
