"""Plans checked by simulating them at the planned traffic, re-planned to the cheapest plan that passes.

The MILP prices latency from means and first-token queues from a G/G/c model; the SLA is a percentile
and the queues behind batched pools see clumps. So after a solve the plan is simulated (seeded, so
planning stays deterministic) and, where it misses, the planning graph is tightened and solved again:
- an LLM node over its TTFT limit has its first-token pool replayed alone on the arrivals the run
  recorded (verify/queue_replay.py) and is sized for the arrival clump whose replicas the replay needs;
- every other first-token op takes the squared CV of the gaps measured at its pool;
- an LLM node over its TTFT limit that replicas cannot fix plans to a tighter TTFT target; one over its
  TBT limit keeps only candidates whose decode step is within a tighter TBT target; an end-to-end
  percentile over the deadline plans to a tighter deadline — each tightened by the overshoot the
  simulation measured.
Once one plan passes, the loop bisects between the last failing targets and the passing ones, so it
ends at the cheapest passing plan it found rather than at an over-tightened one. The plan records
every round; when none passes, `sim_verified` is False (the CLI then exits 1 and says why).

Trace workloads are planned at the trace's measured rate and burstiness (squared CV of its gaps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.from_ir import Arrival, build
from terrazzo.plan.milp import Solution
from terrazzo.plan.planner import Plan, plan_graph, solved_plan, with_baselines_of
from terrazzo.plan.planning_graph import PlanningGraph
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.feedback import Feedback, simulate_plan

MAX_ROUNDS = 8
MARGIN = 0.95  # tighten to 95 % of what a miss needs: the next simulation has its own sampling noise
BISECT_TOLERANCE = 0.04  # stop when passing and failing targets are within 4 % of each other


def measured_arrival(workload: Workload, workload_path: str | Path | None = None) -> Arrival:
    """The traffic to plan for: the workload's rate and burstiness, or a trace's measured ones."""
    a = workload.arrival
    if a.process != "trace" or not a.trace:
        return Arrival.of(workload)
    from terrazzo.sim.traces import load_trace

    path = Path(a.trace)
    if not path.is_file() and workload_path is not None:
        path = Path(workload_path).parent / a.trace
    trace = load_trace(path, a.trace_format)
    gaps = np.diff(np.sort(np.asarray(trace.arrival_s, dtype=float)))
    scv = float(gaps.var() / gaps.mean() ** 2) if len(gaps) > 1 and gaps.mean() > 0 else 1.0
    rate = float(a.rate_per_s or trace.rate_per_s)
    if rate <= 0:
        return Arrival(0.0, 1.0, f"trace:{a.trace}", (
            f"trace {a.trace} has no measurable rate (fewer than two distinct arrivals): planned at 0 req/s "
            "with one replica per pool and not verified; give the workload a rate_per_s",))
    note = (f"planned at trace {Path(a.trace).name}'s measured rate {trace.rate_per_s:.3g} req/s and burstiness "
            f"(squared CV of its gaps {scv:.2f})" if not a.rate_per_s else
            f"planned at the workload's {rate:g} req/s with trace {Path(a.trace).name}'s burstiness (SCV {scv:.2f})")
    return Arrival(rate, max(scv, 1e-3), f"trace:{a.trace}", (note,))


def verified_plan(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
                  explain: bool = False, time_limit_s: float = 60.0, verify: bool = True,
                  workload_path: str | Path | None = None, kv_reuse: bool = True) -> Plan:
    """The planner's plan; with `verify`, for an interactive SLA at a known rate, simulated at its traffic
    and re-planned to the cheapest plan that passes its own simulation. `kv_reuse=False` plans every
    prefix as recomputed (the same code path, for the comparison in plan/kv_comparison.py)."""
    arrival = measured_arrival(workload, workload_path)
    graph = build(agent, workload, sla, cluster, catalog, arrival, kv_reuse=kv_reuse)
    if not verify or not graph.rate_per_s or sla.mode != "interactive":
        return _with_arrival(plan_graph(graph, agent.name, explain, time_limit_s), arrival)
    trace = _trace(workload, workload_path) if workload.arrival.process == "trace" else None
    solved: dict[int, tuple[PlanningGraph, Solution]] = {}  # id(round's plan) → what it was solved from

    def solve(g: PlanningGraph) -> Plan:  # a round's plan: its baselines wait until the loop keeps one
        plan, sol = solved_plan(g, agent.name, explain, time_limit_s)
        solved[id(plan)] = (g, sol)
        return plan

    def finish(plan: Plan, solved_as: Plan) -> Plan:
        g, sol = solved[id(solved_as)]
        return replace(plan, baselines=with_baselines_of(solved_as, g, sol).baselines)

    return _with_arrival(refine(graph, solve, agent, workload, sla, cluster, catalog, trace=trace, finish=finish),
                         arrival)


def _with_arrival(plan: Plan, arrival: Arrival) -> Plan:
    return replace(plan, workload=arrival.to_json(), notes=tuple(dict.fromkeys((*plan.notes, *arrival.notes))))


def _trace(workload: Workload, workload_path: str | Path | None) -> Any:
    from terrazzo.sim.traces import load_trace

    a = workload.arrival
    path = Path(a.trace or "")
    if not path.is_file() and workload_path is not None:
        path = Path(workload_path).parent / (a.trace or "")
    return load_trace(path, a.trace_format)


@dataclass
class Targets:
    """What the MILP plans to, as fractions of the SLA's own limits (1 = the SLA itself)."""

    ttft: dict[str, float] = field(default_factory=dict)  # LLM node → fraction of its TTFT limit
    tbt: dict[str, float] = field(default_factory=dict)  # LLM node → fraction of its TBT limit
    e2e: float = 1.0
    arrival_scv: dict[str, float] = field(default_factory=dict)  # first-token op → measured squared CV
    arrival_clump: dict[str, float] = field(default_factory=dict)  # LLM node → the clump its replayed arrivals need

    def between(self, other: Targets, s: float) -> Targets:
        """The point `s` of the way from self (s = 0) to other (s = 1)."""
        def mix(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: a.get(k, 1.0) + s * (b.get(k, 1.0) - a.get(k, 1.0)) for k in set(a) | set(b)}

        scv = {k: max(self.arrival_scv.get(k, 0.0), other.arrival_scv.get(k, 0.0))
               for k in set(self.arrival_scv) | set(other.arrival_scv)}
        clump = {k: max(self.arrival_clump.get(k, 1.0), other.arrival_clump.get(k, 1.0))
                 for k in set(self.arrival_clump) | set(other.arrival_clump)}
        return Targets(mix(self.ttft, other.ttft), mix(self.tbt, other.tbt), self.e2e + s * (other.e2e - self.e2e),
                       scv, clump)

    def distance(self, other: Targets) -> float:
        keys = [(self.ttft, other.ttft), (self.tbt, other.tbt)]
        gaps = [abs(a.get(k, 1.0) - b.get(k, 1.0)) for a, b in keys for k in set(a) | set(b)]
        return max([abs(self.e2e - other.e2e), *gaps])

    def lines(self, sla_deadline_s: float | None) -> list[str]:
        out = [f"{n}: TTFT planned to {v:.0%} of its limit" for n, v in sorted(self.ttft.items()) if v < 1]
        out += [f"{n}: TBT planned to {v:.0%} of its limit" for n, v in sorted(self.tbt.items()) if v < 1]
        if self.e2e < 1 and sla_deadline_s:
            out.append(f"end-to-end: planned to {self.e2e * sla_deadline_s * 1e3:,.0f} ms ({self.e2e:.0%} of the SLA)")
        out += [f"{op}: arrivals with squared CV {v:.2f}" for op, v in sorted(self.arrival_scv.items()) if v > 1.0]
        out += [f"{n}: arrivals in clumps of {v:.1f}" for n, v in sorted(self.arrival_clump.items()) if v > 1.0]
        return out


def apply_targets(base: PlanningGraph, sla: Sla, t: Targets) -> PlanningGraph:
    """The base graph planned to targets `t`."""
    ops = []
    for o in base.ops:
        node = o.node
        if o.first_token_limit_s is not None:
            limit = sla.limits_for(node).ttft_s or o.first_token_limit_s
            o = replace(o, first_token_limit_s=limit * t.ttft.get(node, 1.0),
                        arrival_scv=max(o.arrival_scv, t.arrival_scv.get(o.name, o.arrival_scv)),
                        arrival_clump=max(o.arrival_clump, t.arrival_clump.get(node, o.arrival_clump)))
        tbt_limit = sla.limits_for(node).tbt_s
        if tbt_limit is not None and t.tbt.get(node, 1.0) < 1.0:
            cap = tbt_limit * t.tbt[node] * (1 + 1e-9)
            o = replace(o, candidates=tuple(
                replace(c, feasible=False, reason=f"TBT {c.tbt_s * 1e3:.1f} ms > {cap * 1e3:.4g} ms planning target")
                if c.feasible and c.tbt_s is not None and c.tbt_s > cap else c for c in o.candidates))
        ops.append(o)
    deadline = base.deadline_s * t.e2e if base.deadline_s is not None else None
    return replace(base, ops=tuple(ops), deadline_s=deadline)


def refine(graph: PlanningGraph, solve: Callable[[PlanningGraph], Plan], agent: Agent, workload: Workload,
           sla: Sla, cluster: Cluster, catalog: Catalog, seed: int = 0, trace: Any = None,
           finish: Callable[[Plan, Plan], Plan] | None = None) -> Plan:
    """`solve(graph)` → Plan; returns the cheapest plan that passed its simulation (or, when none did,
    the last one) with every round in `verification`. `finish(kept, as_solved)` completes the kept plan
    (`as_solved`: the object `solve` returned for it), once, after the loop."""
    done = finish or (lambda kept, _solved: kept)
    raw: dict[int, Plan] = {}  # id(plan a round kept) → what `solve` returned for it
    deadline_s = graph.deadline_s
    rounds: list[dict[str, Any]] = []
    seen: dict[str, tuple[Plan, Feedback]] = {}
    edge_bytes = {(e.src, e.dst): e.data_bytes for e in graph.edges}  # targets leave the edges as they are

    def attempt(t: Targets) -> tuple[Plan, Feedback] | None:
        try:
            solved = solve(apply_targets(graph, sla, t))
            plan = replace(solved, deadline_s=deadline_s)
            raw[id(plan)] = solved
        except PlanInfeasible as exc:
            rounds.append({"round": len(rounds) + 1, "tco_usd_h": math.nan, "meets_sla": False,
                           "percentile": graph.percentile, "e2e_at_sla_s": math.nan, "ttft_at_sla_s": {},
                           "breaks": [], "targets": t.lines(deadline_s), "actions": [f"infeasible: {exc}"]})
            return None
        key = _fleet_key(plan)
        t0 = time.perf_counter()
        if key not in seen:  # the same pools simulate the same: one simulation per distinct plan
            seen[key] = (plan, simulate_plan(plan.to_json(), agent, workload, sla, cluster, catalog, seed, trace,
                                              edge_bytes, graph))
        sim_s = time.perf_counter() - t0
        fb = seen[key][1]
        rounds.append({"round": len(rounds) + 1, "tco_usd_h": plan.usd_h, "meets_sla": fb.meets_sla,
                       "percentile": graph.percentile, "e2e_at_sla_s": fb.e2e_at_sla_s,
                       "ttft_at_sla_s": {n: at for n, (at, _) in fb.ttft_at_sla_s.items()},
                       "tbt_at_sla_s": {n: at for n, (at, _) in fb.tbt_at_sla_s.items()},
                       "breaks": list(fb.breaks), "targets": t.lines(deadline_s), "actions": [],
                       "sim_s": round(sim_s, 3)})
        return plan, fb

    failing = Targets()
    first = attempt(failing)
    if first is None:
        raise PlanInfeasible(rounds[-1]["actions"][0].removeprefix("infeasible: "))
    plan, fb = first
    passing: tuple[Targets, Plan] | None = (failing, plan) if fb.meets_sla else None
    last = plan
    # shrink until a plan passes
    while passing is None and len(rounds) < MAX_ROUNDS:
        nxt, actions = tighten(failing, fb, graph, last)
        rounds[-1]["actions"] = actions
        if nxt is None:
            break
        got = attempt(nxt)
        if got is None:
            break
        last, fb = got
        if fb.meets_sla:
            passing = (nxt, last)  # `failing` stays the last targets that missed
        else:
            failing = nxt
    if passing is None:
        return replace(done(last, raw[id(last)]), verification=tuple(rounds))
    # bisect between the last failing targets and the passing ones, keeping the cheapest pass
    ok_t, best = passing
    bad_t = failing if failing is not ok_t else None
    while bad_t is not None and len(rounds) < MAX_ROUNDS and ok_t.distance(bad_t) > BISECT_TOLERANCE:
        mid = ok_t.between(bad_t, 0.5)
        got = attempt(mid)
        if got is None:  # looser than a feasible target yet infeasible: treat as a miss
            bad_t = mid
            continue
        plan, fb = got
        if fb.meets_sla:
            ok_t = mid
            if plan.usd_h < best.usd_h - 1e-9:
                best = plan
            rounds[-1]["actions"] = ["passes: bisecting towards the SLA's own targets"]
        else:
            bad_t = mid
            rounds[-1]["actions"] = ["misses: bisecting towards the passing targets"]
    if len(rounds) > 1 and (rounds[-1]["tco_usd_h"] != best.usd_h or not rounds[-1]["meets_sla"]):
        rounds.append({"round": len(rounds) + 1, "tco_usd_h": best.usd_h, "meets_sla": True,
                       "percentile": graph.percentile, "e2e_at_sla_s": seen[_fleet_key(best)][1].e2e_at_sla_s,
                       "ttft_at_sla_s": {}, "breaks": [], "final": True,
                       "actions": [f"kept the cheapest passing plan (${best.usd_h:.2f}/h)"]})
    return replace(done(best, raw[id(best)]), verification=tuple(rounds))


def tighten(t: Targets, fb: Feedback, graph: PlanningGraph, plan: Plan) -> tuple[Targets | None, list[str]]:
    """Targets that answer each miss the simulation measured, or None when nothing is left to tighten."""
    actions: list[str] = []
    nt = Targets(dict(t.ttft), dict(t.tbt), t.e2e, dict(t.arrival_scv), dict(t.arrival_clump))
    sized: set[str] = set()  # nodes whose TTFT miss the replayed queue answers with replicas
    for node, clump in fb.arrival_clump.items():
        if clump > nt.arrival_clump.get(node, 1.0) * 1.001:
            nt.arrival_clump[node] = clump
            sized.add(node)
            actions.append(f"{node}: its measured arrivals, replayed through its pool, need the replicas of "
                           f"clumps of {clump:.1f} requests")
    for o in graph.ops:
        if o.node in fb.arrival_clump:
            continue  # the replay measured what its arrivals need; their gaps' SCV would count it twice
        measured = fb.arrival_scv.get(o.name)
        if o.first_token_limit_s is not None and measured is not None and measured > max(
                o.arrival_scv, nt.arrival_scv.get(o.name, 0.0)) * 1.05:
            nt.arrival_scv[o.name] = measured
            actions.append(f"{o.name}: arrivals measured with squared CV {measured:.2f} (planned {o.arrival_scv:.2f})")
    for node, over in fb.ttft_misses().items():
        if node in sized:
            continue
        nt.ttft[node] = t.ttft.get(node, 1.0) * MARGIN / over
        actions.append(f"{node}: TTFT {over:.2f}× over its limit: planned to {nt.ttft[node]:.0%} of it")
    for node, over in fb.tbt_misses().items():
        nt.tbt[node] = t.tbt.get(node, 1.0) * MARGIN / over
        actions.append(f"{node}: TBT {over:.2f}× over its limit: candidates kept within {nt.tbt[node]:.0%} of it")
    if fb.deadline_s is not None and fb.e2e_at_sla_s > fb.deadline_s:
        tail = fb.e2e_at_sla_s / max(plan.e2e_latency_s, 1e-12)
        nt.e2e = min(t.e2e * MARGIN, fb.deadline_s * MARGIN / tail / fb.deadline_s)
        actions.append(f"end-to-end: planned to {nt.e2e * fb.deadline_s * 1e3:,.0f} ms (p{graph.percentile:g} "
                       f"{fb.e2e_at_sla_s * 1e3:,.0f} ms is {tail:.2f}× the mean-based estimate)")
    if not math.isfinite(nt.e2e) or nt.e2e <= 0:
        nt.e2e = t.e2e
    if nt == t or not actions:
        actions.append("nothing left to tighten: the misses are not in the planner's model "
                       + "(" + "; ".join(fb.breaks[:2]) + ")" if fb.breaks else "")
        return None, [a for a in actions if a]
    return nt, actions


def _fleet_key(plan: Plan) -> str:
    return ";".join(f"{p.name}×{p.replicas}:" + ",".join(f"{m.op}={m.share:.4f}" for m in p.ops)
                    for p in sorted(plan.pools, key=lambda p: p.name))
