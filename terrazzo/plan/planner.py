"""From specs to a checked plan: solve the MILP, re-check it independently, price the baselines on the
same inputs, and explain infeasibility or the runner-up of each op."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.baseline_reasons import cannot_apply, why_infeasible
from terrazzo.plan.check import Assignment, check, devices_used, first_token_tail_s, min_replicas
from terrazzo.plan.from_ir import build
from terrazzo.plan.keep_or_buy import FleetDecision, fleet_decision
from terrazzo.plan.milp import Allow, solve_milp
from terrazzo.plan.planning_graph import REFERENCE_DEVICE, OpCandidate, PlanningGraph
from terrazzo.plan.power import energy_j_per_request, fleet_power_kw
from terrazzo.plan_file import PLACEMENT_SCHEMA, PLAN_SCHEMA
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload


@dataclass(frozen=True)
class PlacedOp:
    name: str
    kind: str
    node: str
    candidate: OpCandidate
    replicas: int
    visits: float
    finish_s: float
    ttft_at_sla_s: float | None = None  # a first-token op's TTFT at the SLA's percentile, queueing included

    @property
    def pool(self) -> str:
        """Ops on one device and parallelism share a pool, except a disaggregated call's prefill and decode
        phases, which run on pools of their own even on one device type."""
        c = self.candidate
        role = {"llm.prefill": "prefill-", "llm.decode": "decode-"}.get(self.kind, "")
        return f"{role}{c.device}-tp{c.tp}-pp{c.pp}"


@dataclass(frozen=True)
class Baseline:
    name: str
    usd_h: float
    e2e_latency_s: float
    feasible: bool
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    agent: str
    rate_per_s: float
    deadline_s: float | None
    ops: tuple[PlacedOp, ...]
    usd_h: float
    e2e_latency_s: float
    output_tokens_per_s: float
    baselines: tuple[Baseline, ...]
    solver_status: str
    explain: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    verification: tuple[dict[str, Any], ...] = ()  # simulation rounds (verify/replan.py); empty if not run
    fleet: FleetDecision | None = None  # keep or buy: owned used/idle, bought, $/h rows (plan/keep_or_buy.py)
    power_kw: float = 0.0  # device power, utilisation-weighted (plan/power.py)
    energy_j_per_request: float = 0.0  # at the wall (× PUE)
    percentile: float = 99.0  # the SLA's

    @property
    def sim_verified(self) -> bool | None:
        """Whether the simulation at the planned rate met the SLA; None when the plan was not simulated."""
        return self.verification[-1]["meets_sla"] if self.verification else None

    @property
    def usd_per_request(self) -> float:
        return self.usd_h / 3600 / self.rate_per_s if self.rate_per_s else math.inf

    @property
    def usd_per_m_tokens(self) -> float:
        return self.usd_h / 3600 / self.output_tokens_per_s * 1e6 if self.output_tokens_per_s else math.inf

    def ratio(self, baseline: Baseline) -> float:
        return baseline.usd_h / self.usd_h if baseline.feasible and self.usd_h else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "agent": self.agent,
            "inputs": self.inputs,
            "rate_per_s": self.rate_per_s,
            "deadline_s": self.deadline_s,
            "solver_status": self.solver_status,
            "tco_usd_h": self.usd_h,
            "usd_per_request": self.usd_per_request,
            "usd_per_m_output_tokens": self.usd_per_m_tokens,
            "e2e_latency_s": self.e2e_latency_s,
            "ops": [
                {"name": p.name, "kind": p.kind, "node": p.node, "device": p.candidate.device, "tp": p.candidate.tp,
                 "pp": p.candidate.pp, "batch": p.candidate.batch, "replicas": p.replicas,
                 "devices": p.replicas * p.candidate.devices, "pool": p.pool, "visits": p.visits,
                 "latency_s": p.candidate.latency_s, "finish_s": p.finish_s, "usd_h": self.op_usd_h()[p.name],
                 "full_tco_usd_h": p.replicas * p.candidate.usd_h, "tbt_s": p.candidate.step_s,
                 "first_token_s": p.candidate.first_token_s, "ttft_at_sla_s": p.ttft_at_sla_s,
                 "detail": p.candidate.detail, "source": p.candidate.source}
                for p in self.ops
            ],
            "fleet": self.fleet.to_json() if self.fleet else None,
            "power_kw": self.power_kw,
            "energy_j_per_request": self.energy_j_per_request,
            "percentile": self.percentile,
            "baselines": [
                {"name": b.name, "tco_usd_h": b.usd_h if b.feasible else None, "e2e_latency_s": b.e2e_latency_s,
                 "feasible": b.feasible, "reason": b.reason,
                 "ratio": self.ratio(b) if b.feasible else None}
                for b in self.baselines
            ],
            "placement": placement_json(self),
            "explain": self.explain,
            "verification": {"simulated": bool(self.verification), "meets_sla": self.sim_verified,
                             "rounds": list(self.verification)},
        }

    def op_usd_h(self) -> dict[str, float]:
        """Each op's share of the headline (plan/keep_or_buy.py); full TCO per replica without a fleet."""
        if self.fleet is None:
            return {p.name: p.replicas * p.candidate.usd_h for p in self.ops}
        per = {line.device: line for line in self.fleet.lines}
        return {p.name: per[p.candidate.device].usd_h * p.replicas * p.candidate.devices / per[p.candidate.device].used
                for p in self.ops}

    def table(self) -> Table:
        from terrazzo.plan.plan_tables import plan_table

        return plan_table(self)

    def verification_lines(self) -> list[str]:
        """One line per simulation round (rich markup), with what the planner learned from a miss."""
        out = []
        for r in self.verification:
            verdict = "[green]meets the SLA[/]" if r["meets_sla"] else "[red]misses the SLA[/]"
            out.append(f"simulated at {self.rate_per_s:g} req/s, round {r['round']} (${r['tco_usd_h']:.2f}/h): "
                       f"p{r.get('percentile', 99):g} end-to-end {r['e2e_at_sla_s']:.2f} s, {verdict}"
                       + "".join(f"\n  {a}" for a in r.get("actions", [])))
        return out

    def baseline_table(self) -> Table:
        t = Table("baseline", "TCO $/h", "E2E ms", "cost ratio (baseline ÷ plan)", title="same inputs, baselines")
        for b in self.baselines:
            if b.feasible:
                t.add_row(b.name, f"{b.usd_h:.2f}", f"{b.e2e_latency_s * 1e3:.1f}", f"{self.ratio(b):.2f}×")
            else:
                t.add_row(b.name, "-", "-", f"infeasible: {b.reason}")
        return t


def placement_json(plan: Plan) -> dict[str, Any]:
    """What the IR's apply-plan pass reads: one placement per granular op."""
    return {
        "schema": PLACEMENT_SCHEMA,
        "placements": {
            p.name: {"device": p.candidate.device, "tp": p.candidate.tp, "pp": p.candidate.pp,
                     "batch": p.candidate.batch, "replicas": p.replicas, "pool": p.pool}
            for p in plan.ops
        },
    }


def plan(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
         explain: bool = False, time_limit_s: float = 60.0) -> Plan:
    """The MILP's plan for the specs, checked and with baselines; `terrazzo.verify.replan.verified_plan`
    also simulates it and re-plans on a miss."""
    return plan_graph(build(agent, workload, sla, cluster, catalog), agent.name, explain, time_limit_s)


def plan_graph(graph: PlanningGraph, name: str, explain: bool = False, time_limit_s: float = 60.0,
               with_baselines: bool = True) -> Plan:
    sol = solve_milp(graph, time_limit_s=time_limit_s)
    if sol.assignment is None:
        raise PlanInfeasible(explain_infeasible(graph))
    verdict = check(graph, sol.assignment)
    if not verdict.ok:  # the solver's word is not enough: never hand out a plan that fails the check
        raise PlanInfeasible("the solver's plan fails the independent check: " + "; ".join(verdict.violations))
    fleet = fleet_decision(graph, devices_used(graph, sol.assignment),
                           graph.penalty_usd_h_per_s * verdict.slack_s if verdict.slack_s else 0.0)
    return Plan(
        name, graph.rate_per_s, graph.deadline_s, _placed(graph, sol.assignment, verdict.finish_s), fleet.usd_h,
        verdict.e2e_latency_s, _output_tokens_per_s(graph, sol.assignment),
        tuple(baselines(graph)) if with_baselines else (), sol.status,
        runner_ups(graph, sol.assignment) if explain else {}, fleet=fleet,
        power_kw=fleet_power_kw(graph, sol.assignment.chosen),
        energy_j_per_request=energy_j_per_request(graph, sol.assignment.chosen), percentile=graph.percentile,
    )


def _placed(graph: PlanningGraph, a: Assignment, finish: dict[str, float]) -> tuple[PlacedOp, ...]:
    return tuple(
        PlacedOp(o.name, o.kind, o.node, o.candidates[a.chosen[o.name][0]], a.chosen[o.name][1], o.visits,
                 finish.get(o.name, 0.0), _ttft_at_sla(graph, o.name, o.candidates[a.chosen[o.name][0]],
                                                       a.chosen[o.name][1]))
        for o in graph.ops if o.name in a.chosen
    )


def _ttft_at_sla(graph: PlanningGraph, op: str, c: OpCandidate, replicas: int) -> float | None:
    if c.first_token_s is None:
        return None
    return first_token_tail_s(graph, op, c, replicas)


def _output_tokens_per_s(graph: PlanningGraph, a: Assignment) -> float:
    return sum(graph.rate_per_s * o.visits * o.output_tokens for o in graph.ops
               if o.name in a.chosen and o.kind in ("llm.decode", "llm.aggregated"))


def _is_llm(op: str, graph: PlanningGraph) -> bool:
    return graph.op(op).kind.startswith("llm.")


def baselines(graph: PlanningGraph) -> list[Baseline]:
    """Best homogeneous aggregated, best homogeneous disaggregated, and H100::H100 — the LLM ops
    restricted, everything else free — on the same planning graph; one that cannot apply says why."""
    accelerators = sorted({c.device for o in graph.ops if _is_llm(o.name, graph) for c in o.candidates})
    llm_nodes = {g.node for g in graph.groups}
    out = []
    for label, variant in (("homogeneous aggregated", "aggregated"), ("homogeneous disaggregated", "disaggregated")):
        best: Baseline | None = None
        misses = []
        for d in accelerators:
            if d not in graph.cluster_devices:
                continue
            res = _restricted(graph, f"{label} ({d})", lambda op, c, d=d: not _is_llm(op, graph) or c.device == d,
                              dict.fromkeys(llm_nodes, variant))
            if res.feasible and (best is None or res.usd_h < best.usd_h):
                best = res
            elif not res.feasible:
                misses.append(f"{d}: {res.reason}")
        out.append(best or Baseline(f"best {label}", math.inf, math.inf, False,
                                    "no single device type can serve every LLM call " + variant + ": "
                                    + "; ".join(misses or ["no accelerator in the cluster"])))
    ref_name = "H100::H100 (paper's reference)"
    why_not = cannot_apply(graph, REFERENCE_DEVICE)
    if why_not:
        out.append(Baseline(ref_name, math.inf, math.inf, False, why_not))
        return out
    ref = graph if REFERENCE_DEVICE in graph.cluster_devices else _with_device(graph, REFERENCE_DEVICE)
    out.append(_restricted(ref, ref_name, lambda op, c: not _is_llm(op, ref) or c.device == REFERENCE_DEVICE,
                           dict.fromkeys(llm_nodes, "disaggregated")))
    return out


def _with_device(graph: PlanningGraph, device: str) -> PlanningGraph:
    return replace(graph, cluster_devices=(*graph.cluster_devices, device))


def _restricted(graph: PlanningGraph, name: str, allow: Allow, variants: dict[str, str]) -> Baseline:
    sol = solve_milp(graph, allow, variants)
    if sol.assignment is None:
        return Baseline(name, math.inf, math.inf, False, why_infeasible(graph, allow, variants, sol.status))
    v = check(graph, sol.assignment)
    return Baseline(name, v.usd_h, v.e2e_latency_s, v.ok, "; ".join(v.violations))


def runner_ups(graph: PlanningGraph, a: Assignment) -> dict[str, str]:
    """Per op: the best candidate on another device type with everything else fixed, and why it lost."""
    base = check(graph, a)
    out = {}
    for name, (k, _) in a.chosen.items():
        op = graph.op(name)
        current = op.candidates[k]
        best: tuple[float, str] | None = None
        for j, c in enumerate(op.candidates):
            if c.device == current.device or c.device not in graph.cluster_devices:
                continue
            if not c.feasible:
                why = c.reason
                score = math.inf
            else:
                trial = Assignment({**a.chosen, name: (j, min_replicas(graph, name, c))})
                v = check(graph, trial)
                score = v.usd_h
                why = (f"+${v.usd_h - base.usd_h:.2f}/h" if v.ok
                       else "; ".join(x for x in v.violations if name in x or "end-to-end" in x))
            if best is None or score < best[0]:
                best = (score, f"{c.label}: {why}")
        out[name] = best[1] if best else "no alternative device type"
    return out


def explain_infeasible(graph: PlanningGraph) -> str:
    """Which constraint binds and by how much, op by op, then inventory, then the end-to-end SLA."""
    lines = []
    for o in graph.ops:
        in_cluster = [c for c in o.candidates if c.device in graph.cluster_devices]
        if any(c.feasible for c in in_cluster):
            continue
        if o.name in {op for g in graph.groups for ops in g.variants.values() for op in ops}:
            group = next(g for g in graph.groups if any(o.name in ops for ops in g.variants.values()))
            others = [op for v, ops in group.variants.items() for op in ops if o.name not in ops]
            if others and all(any(c.feasible and c.device in graph.cluster_devices
                                  for c in graph.op(x).candidates) for x in others):
                continue  # the other serving variant can still do it
        lines.append(_closest(o, in_cluster))
    if lines:
        return "; ".join(lines)
    if graph.mode != "unconstrained":
        free = solve_milp(replace(graph, mode="unconstrained"))
        if free.assignment is not None:
            need = devices_used(graph, free.assignment)
            short = [f"{d}: needs {n}, inventory has {graph.inventory.get(d, 0)} and {d} is not in 'buy'"
                     for d, n in need.items()
                     if n > graph.inventory.get(d, 0) and not (graph.mode == "own-and-buy" and d in graph.buy)]
            if short:
                return ("inventory binds: the cheapest plan without it uses " + ", ".join(short)
                        + " (raise the inventory or add the device to 'buy', docs/clusters.md)")
    if graph.deadline_s is not None:
        relaxed = solve_milp(replace(graph, deadline_s=None))
        if relaxed.assignment is not None:
            fastest = _fastest_e2e(graph)
            return (f"end-to-end SLA {graph.deadline_s * 1e3:g} ms unattainable: the fastest placement takes "
                    f"{fastest * 1e3:.1f} ms ({(fastest - graph.deadline_s) * 1e3:.1f} ms over)")
    return "no feasible plan (the demand cannot be placed on the cluster's device types)"


def _closest(o: Any, cands: list[OpCandidate]) -> str:
    """Per device type, the fastest configuration that fits and the limit it misses."""
    if not cands:
        return f"{o.name}: no device in the cluster can run a {o.kind} op (add a CPU or accelerator type)"
    what = {"llm.prefill": "TTFT", "llm.decode": "TBT", "llm.aggregated": "TBT"}.get(o.kind, "latency")
    subject = f"{o.model} {o.dtype}" if o.model else o.name
    parts = []
    for device in dict.fromkeys(c.device for c in cands):
        mine = [c for c in cands if c.device == device]
        fits = [c for c in mine if "GB per device" not in c.reason and math.isfinite(c.latency_s)]
        if not fits:
            parts.append(f"on {device}: does not fit in memory ({mine[0].reason})")
            continue
        best = min(fits, key=lambda c: c.latency_s)
        miss = re.match(r"(TTFT|TBT) ([\d.]+) ms.*> ([\d.]+) ms", best.reason)
        if miss:
            parts.append(f"{miss.group(1)} {miss.group(3)} ms unattainable for {subject} on {device}: "
                         f"best {miss.group(2)} ms at TP={best.tp} PP={best.pp}")
        else:
            parts.append(f"{what} unattainable for {subject} on {device}: {best.reason or 'no capacity'}")
    return f"{o.name}: " + "; ".join(parts)


def _fastest_e2e(graph: PlanningGraph) -> float:
    """Critical path with every op on its fastest feasible candidate (a lower bound on E2E)."""
    fast: dict[str, tuple[int, int]] = {}
    for o in graph.ops:
        ok = [(c.latency_s, k) for k, c in enumerate(o.candidates) if c.feasible and c.device in graph.cluster_devices]
        if ok:
            fast[o.name] = (min(ok)[1], 1)
    loose = replace(graph, deadline_s=None)
    best = math.inf
    for g_choice in _variant_choices(graph):
        chosen = {k: v for k, v in fast.items() if k not in g_choice}
        best = min(best, check(loose, Assignment(chosen)).e2e_latency_s)
    return best


def _variant_choices(graph: PlanningGraph) -> list[set[str]]:
    """Sets of ops to leave out, one per combination of serving variants (few nodes, few variants)."""
    combos: list[set[str]] = [set()]
    for g in graph.groups:
        combos = [c | {op for v2, ops in g.variants.items() if v2 != v for op in ops}
                  for c in combos for v in g.variants]
    return combos[:256]
