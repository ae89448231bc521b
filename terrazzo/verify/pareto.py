"""The cost / latency / energy front (the paper's optimizer is multi-objective), by the ε-constraint
method on the same HiGHS MILP: minimise TCO $/h subject to the planned end-to-end latency ≤ ε_L (the
deadline row) and device power ≤ ε_P (the `max_kw` row; at a fixed rate energy per request is power
× PUE ÷ rate, so a power bound is an energy bound).

The sweep tightens ε_L from the SLA's deadline, and for each ε_L tightens ε_P, each time to just under
what the last solution achieved, until the MILP is infeasible; the solutions are filtered to the
non-dominated ones with distinct fleets. Each point is then simulated at the planned rate (and
re-planned where it misses, as `terrazzo plan` does), so every point on the front is a plan that meets
the SLA in simulation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible, SpecError
from terrazzo.plan.check import Assignment, check
from terrazzo.plan.milp import solve_milp
from terrazzo.plan.planner import Plan, plan_graph
from terrazzo.plan.planning_graph import PlanningGraph
from terrazzo.plan.power import energy_j_per_request, fleet_power_kw
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

OBJECTIVES = ("cost", "latency", "energy")
STEP = 0.99  # the next ε is this fraction of what the last solution achieved: 1 % below it, fine enough
#             not to step over plans a replica apart (at 0.97 the voice front lost 5 of its 9 points)
MAX_LEVELS = 8  # per objective swept
PARETO_SCHEMA = "terrazzo.pareto/v1"


@dataclass(frozen=True)
class Solved:
    """One MILP solution of the sweep, judged by the checker."""

    assignment: Assignment
    usd_h: float
    latency_s: float
    power_kw: float
    energy_j: float
    eps_latency_s: float | None
    eps_kw: float | None
    pools: tuple[tuple[str, int], ...] = ()

    @property
    def fleet(self) -> tuple[tuple[str, int], ...]:
        """What makes two points different fleets: their pools and replica counts."""
        return self.pools


def parse_objectives(text: str) -> tuple[str, ...]:
    objs = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in objs if o not in OBJECTIVES]
    if bad or "cost" not in objs or len(objs) < 2:
        raise SpecError(f"--pareto takes cost and one or both of latency, energy (e.g. cost,latency,energy); "
                        f"got {text!r}")
    return objs


def _solve(graph: PlanningGraph, eps_latency_s: float | None, eps_kw: float | None) -> Solved | None:
    g = replace(graph, deadline_s=eps_latency_s if eps_latency_s is not None else graph.deadline_s,
                max_kw=_tighter(graph.max_kw, eps_kw))
    sol = solve_milp(g)
    if sol.assignment is None:
        return None
    v = check(g, sol.assignment)
    if not v.ok:
        return None
    return Solved(sol.assignment, v.usd_h, v.e2e_latency_s, fleet_power_kw(g, v.pools),
                  energy_j_per_request(g, v.pools), eps_latency_s, eps_kw,
                  tuple(sorted((name, p.replicas) for name, p in v.pools.items())))


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def sweep(graph: PlanningGraph, objectives: tuple[str, ...], step: float = STEP,
          max_levels: int = MAX_LEVELS) -> list[Solved]:
    """ε-constraint solutions over the objectives' grid (all of them, dominated ones included)."""
    out: list[Solved] = []
    base = _solve(graph, None, None)
    if base is None:
        return out
    lat_levels: list[Solved] = [base]
    if "latency" in objectives:
        cur = base
        for _ in range(max_levels - 1):
            nxt = _solve(graph, cur.latency_s * step, None)
            if nxt is None:
                break
            lat_levels.append(nxt)
            cur = nxt
    for start in lat_levels:
        out.append(start)
        if "energy" not in objectives:
            continue
        cur = start
        for _ in range(max_levels - 1):
            nxt = _solve(graph, start.eps_latency_s, cur.power_kw * step)
            if nxt is None:
                break
            out.append(nxt)
            cur = nxt
    return out


def dominates(a: tuple[float, ...], b: tuple[float, ...], tol: float = 1e-9) -> bool:
    return all(x <= y * (1 + tol) + tol for x, y in zip(a, b, strict=True)) and any(
        x < y * (1 - tol) - tol for x, y in zip(a, b, strict=True))


def objective_values(s: Solved, objectives: tuple[str, ...]) -> tuple[float, ...]:
    return tuple({"cost": s.usd_h, "latency": s.latency_s, "energy": s.energy_j}[o] for o in objectives)


def non_dominated(points: list[Solved], objectives: tuple[str, ...]) -> list[Solved]:
    """Distinct fleets no other point beats on every objective, cheapest first."""
    seen: set[Any] = set()
    unique = []
    for p in sorted(points, key=lambda p: objective_values(p, objectives)):
        if p.fleet not in seen:
            seen.add(p.fleet)
            unique.append(p)
    return [p for p in unique if not any(dominates(objective_values(q, objectives), objective_values(p, objectives))
                                         for q in unique if q is not p)]


# --- with simulation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrontPoint:
    plan: Plan
    eps_latency_s: float | None
    eps_kw: float | None

    def to_json(self) -> dict[str, Any]:
        last = self.plan.verification[-1] if self.plan.verification else {}
        return {"tco_usd_h": self.plan.usd_h, "e2e_latency_s": self.plan.e2e_latency_s,
                "energy_j_per_request": self.plan.energy_j_per_request, "power_kw": self.plan.power_kw,
                "eps_latency_s": self.eps_latency_s, "eps_kw": self.eps_kw,
                "simulated_e2e_at_sla_s": last.get("e2e_at_sla_s"), "meets_sla": self.plan.sim_verified,
                "devices": {line.device: line.used for line in self.plan.fleet.lines if line.used}
                if self.plan.fleet else {}, "plan": self.plan.to_json()}


def front(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
          objectives: tuple[str, ...], verify: bool = True, step: float = STEP,
          max_levels: int = MAX_LEVELS) -> list[FrontPoint]:
    """The non-dominated plans, each simulated (and re-planned on a miss) unless `verify` is off; points
    whose simulation still misses are dropped, and the rest filtered again."""
    from terrazzo.plan.from_ir import build
    from terrazzo.verify.replan import refine

    graph = build(agent, workload, sla, cluster, catalog)
    points = non_dominated(sweep(graph, objectives, step, max_levels), objectives)
    out: list[FrontPoint] = []
    for p in points:
        # judged against the SLA's own deadline; the point's ε bounds stay on inside every re-plan
        g = replace(graph, max_kw=_tighter(graph.max_kw, p.eps_kw))
        solve: Callable[[PlanningGraph], Plan] = partial(_solve_within, eps_latency_s=p.eps_latency_s,
                                                         name=agent.name)
        try:
            plan = (refine(g, solve, agent, workload, sla, cluster, catalog) if verify and graph.rate_per_s
                    else solve(g))
        except PlanInfeasible:
            continue
        if verify and not plan.sim_verified:
            continue
        out.append(FrontPoint(plan, p.eps_latency_s, p.eps_kw))
    return _final(out, objectives)


def _solve_within(g: PlanningGraph, eps_latency_s: float | None, name: str) -> Plan:
    deadline = g.deadline_s
    tight = replace(g, deadline_s=_tighter(deadline, eps_latency_s))
    return replace(plan_graph(tight, name=name, with_baselines=False), deadline_s=deadline)


def _final(points: list[FrontPoint], objectives: tuple[str, ...]) -> list[FrontPoint]:
    def vals(fp: FrontPoint) -> tuple[float, ...]:
        return tuple({"cost": fp.plan.usd_h, "latency": fp.plan.e2e_latency_s,
                      "energy": fp.plan.energy_j_per_request}[o] for o in objectives)

    seen, unique = set(), []
    for fp in sorted(points, key=vals):
        key = json.dumps(fp.plan.to_json()["placement"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(fp)
    return [fp for fp in unique if not any(dominates(vals(q), vals(fp)) for q in unique if q is not fp)]


def front_table(points: list[FrontPoint], objectives: tuple[str, ...], agent: str, rate: float) -> Table:
    pct = f"p{points[0].plan.percentile:g}" if points else "p99"
    t = Table("#", "TCO $/h", "E2E mean s (plan)", f"E2E {pct} s (sim)", "J/request", "kW", "devices", "ε latency s",
              "ε kW", "SLA in sim", title=f"Pareto front ({', '.join(objectives)}): {agent} at {rate:g} req/s")
    for i, fp in enumerate(points, 1):
        p = fp.plan
        last = p.verification[-1] if p.verification else {}
        devices = " + ".join(f"{line.used} {line.device}" for line in p.fleet.lines if line.used) if p.fleet else "-"
        sim = "[green]met[/]" if p.sim_verified else "-" if p.sim_verified is None else "[red]missed[/]"
        t.add_row(str(i), f"{p.usd_h:.2f}", f"{p.e2e_latency_s:.2f}",
                  f"{last['e2e_at_sla_s']:.2f}" if last else "-", f"{p.energy_j_per_request:,.0f}",
                  f"{p.power_kw:.1f}", devices, f"{fp.eps_latency_s:.2f}" if fp.eps_latency_s else "SLA",
                  f"{fp.eps_kw:.1f}" if fp.eps_kw else "-", sim)
    return t


def front_figure(points: list[FrontPoint], path: Path, agent: str, rate: float) -> Path:
    """Cost against planned latency and against energy per request, one marker per front point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cost = [fp.plan.usd_h for fp in points]
    lat = [fp.plan.e2e_latency_s for fp in points]
    energy = [fp.plan.energy_j_per_request / 1e3 for fp in points]
    sc = axes[0].scatter(lat, cost, c=energy, cmap="viridis", s=40)
    fig.colorbar(sc, ax=axes[0], label="energy kJ/request")
    axes[0].set_xlabel("planned end-to-end latency, mean (s)")
    axes[0].set_ylabel("TCO $/h")
    sc2 = axes[1].scatter(energy, cost, c=lat, cmap="plasma", s=40)
    fig.colorbar(sc2, ax=axes[1], label="E2E mean s")
    axes[1].set_xlabel("energy per request at the wall (kJ)")
    axes[1].set_ylabel("TCO $/h")
    for i in range(1, len(points) + 1):
        axes[0].annotate(str(i), (lat[i - 1], cost[i - 1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes[1].annotate(str(i), (energy[i - 1], cost[i - 1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.suptitle(f"{agent} at {rate:g} req/s: {len(points)} non-dominated plans (ε-constraint on HiGHS), "
                 "each meeting the SLA in simulation", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_command(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog, objectives: str,
                   output: Path | None, figure: Path | None, as_json: bool, console: Console) -> int:
    objs = parse_objectives(objectives)
    points = front(agent, workload, sla, cluster, catalog, objs)
    rate = workload.arrival.rate_per_s or 0.0
    doc = {"schema": PARETO_SCHEMA, "agent": agent.name, "rate_per_s": rate, "objectives": list(objs),
           "points": [fp.to_json() for fp in points]}
    if output:
        output.write_text(json.dumps(doc, indent=2))
    if figure and points:
        front_figure(points, figure, agent.name, rate)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        console.print(front_table(points, objs, agent.name, rate))
        for path in (output, figure):
            if path:
                console.print(f"wrote {path}")
    return 0 if points else 1


def all_metrics(graph: PlanningGraph, a: Assignment) -> tuple[float, float, float] | None:
    """(TCO $/h, planned E2E s, J/request) of an assignment the checker accepts, else None (brute force)."""
    v = check(graph, a)
    if not v.ok:
        return None
    return v.usd_h, v.e2e_latency_s, energy_j_per_request(graph, v.pools)
