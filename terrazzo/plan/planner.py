"""From specs to a checked plan: solve the MILP, re-check it independently, price the baselines on the
same inputs, and explain infeasibility or the runner-up of each op."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.baseline_reasons import cannot_apply, no_allowed_column, why_infeasible
from terrazzo.plan.check import Assignment, Share, Verdict, check, min_replicas
from terrazzo.plan.fleet_model import PoolSize, first_token_attainable, first_token_tail_s, pool_key
from terrazzo.plan.from_ir import build
from terrazzo.plan.infeasibility import explain_infeasible
from terrazzo.plan.keep_or_buy import FleetDecision, fleet_decision, pool_usd_h
from terrazzo.plan.kv_candidates import kv_entries
from terrazzo.plan.milp import Allow, Solution, solve_milp
from terrazzo.plan.planning_graph import REFERENCE_DEVICE, OpCandidate, PlanningGraph
from terrazzo.plan.power import energy_j_per_request, fleet_power_kw
from terrazzo.plan.robustness import robustness
from terrazzo.plan_file import PLACEMENT_SCHEMA, PLAN_SCHEMA, PoolEntry, PoolMember
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload


@dataclass(frozen=True)
class Placement:
    """One share of an op on one pool."""

    pool: str
    share: float
    candidate: OpCandidate


@dataclass(frozen=True)
class PlacedOp:
    name: str
    kind: str
    node: str
    placements: tuple[Placement, ...]
    visits: float
    finish_s: float
    replicas: int  # of the pool carrying its largest share
    ttft_at_sla_s: float | None = None  # a first-token op's TTFT at the SLA's percentile, queueing included

    @property
    def primary(self) -> Placement:
        return max(self.placements, key=lambda p: p.share)

    @property
    def candidate(self) -> OpCandidate:
        return self.primary.candidate

    @property
    def pool(self) -> str:
        return self.primary.pool

    @property
    def latency_s(self) -> float:
        return max(p.candidate.latency_s for p in self.placements)


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
    pools: tuple[PoolEntry, ...] = ()
    solver_gap: float = 0.0
    solver_s: float = 0.0
    percentile: float = 99.0
    notes: tuple[str, ...] = ()
    workload: dict[str, Any] = field(default_factory=dict)  # the traffic planned for (rate, burstiness, source)
    fleet: FleetDecision | None = None  # keep or buy: owned used/idle, bought, $/h rows (plan/keep_or_buy.py)
    power_kw: float = 0.0  # device power, utilisation-weighted (plan/power.py)
    energy_j_per_request: float = 0.0  # at the wall (× PUE)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)  # op → its prefix-reuse entry (plan/kv_candidates.py)

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

    @property
    def devices(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for p in self.pools:
            used[p.device] = used.get(p.device, 0) + p.devices
        return dict(sorted(used.items()))

    def pool_usd_h(self) -> dict[str, float]:
        """Each pool's share of the headline (its device type's keep-or-buy $/h by devices); sums to it."""
        if self.fleet is None:
            return {p.name: p.usd_h for p in self.pools}
        return pool_usd_h(self.fleet, {p.name: (p.device, p.devices) for p in self.pools})

    def op_usd_h(self) -> dict[str, float]:
        """Each op's share of the headline: its pools' shares, split by load as `_op_json` splits them."""
        per_pool = self.pool_usd_h()
        by_name = {p.name: p for p in self.pools}
        out = {}
        for op in self.ops:
            total = 0.0
            for q in op.placements:
                pool = by_name[q.pool]
                frac = _member_load(pool, op.name) / pool.load if pool.load else 1.0 / len(pool.ops)
                total += per_pool[q.pool] * frac
            out[op.name] = total
        return out

    def ratio(self, baseline: Baseline) -> float:
        return baseline.usd_h / self.usd_h if baseline.feasible and self.usd_h else math.nan

    def to_json(self) -> dict[str, Any]:
        by_name = {p.name: p for p in self.pools}
        shares = self.op_usd_h()
        return {
            "schema": PLAN_SCHEMA,
            "agent": self.agent,
            "inputs": self.inputs,
            "rate_per_s": self.rate_per_s,
            "workload": self.workload,
            "deadline_s": self.deadline_s,
            "percentile": self.percentile,
            "solver_status": self.solver_status,
            "solver": {"status": self.solver_status, "gap": self.solver_gap, "milp_s": self.solver_s,
                       "proven_optimal": self.solver_status == "Optimal"},
            "tco_usd_h": self.usd_h,
            "usd_per_request": self.usd_per_request,
            "usd_per_m_output_tokens": self.usd_per_m_tokens,
            "e2e_latency_s": self.e2e_latency_s,
            "devices": self.devices,
            "pools": [p.to_json() for p in self.pools],
            "ops": [_op_json(p, by_name) | {"usd_h": shares[p.name], "tbt_s": p.candidate.tbt_s,
                                            "first_token_s": p.candidate.first_token_s,
                                            "ttft_at_sla_s": p.ttft_at_sla_s,
                                            "latency_spread": list(p.candidate.spread) if p.candidate.spread else None}
                    | ({"kv": self.kv[p.name]} if p.name in self.kv else {})
                    for p in self.ops],
            "pool_usd_h": self.pool_usd_h(),
            "fleet": self.fleet.to_json() if self.fleet else None,
            "power_kw": self.power_kw,
            "energy_j_per_request": self.energy_j_per_request,
            "baselines": [
                {"name": b.name, "tco_usd_h": b.usd_h if b.feasible else None, "e2e_latency_s": b.e2e_latency_s,
                 "feasible": b.feasible, "reason": b.reason,
                 "ratio": self.ratio(b) if b.feasible else None}
                for b in self.baselines
            ],
            "placement": placement_json(self),
            "explain": self.explain,
            "notes": list(self.notes),
            "verification": {"simulated": bool(self.verification), "meets_sla": self.sim_verified,
                             "rounds": list(self.verification)},
        }

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


def _op_json(p: PlacedOp, pools: dict[str, PoolEntry]) -> dict[str, Any]:
    """An op's entry: its placements (pool, share, candidate), and the flat fields of its largest share
    for readers that want one device per op."""
    c, main = p.candidate, pools[p.pool]
    usd = sum(pools[q.pool].usd_h * (_member_load(pools[q.pool], p.name) / pools[q.pool].load
                                     if pools[q.pool].load else 1.0 / len(pools[q.pool].ops))
              for q in p.placements)
    return {"name": p.name, "kind": p.kind, "node": p.node, "visits": p.visits, "latency_s": p.latency_s,
            "finish_s": p.finish_s, "device": c.device, "tp": c.tp, "pp": c.pp, "batch": c.batch,
            "engine": c.engine, "pool": p.pool, "replicas": main.replicas, "devices": main.devices,
            "usd_h": usd, "detail": c.detail, "source": c.source,
            "placements": [{"pool": q.pool, "share": q.share, "device": q.candidate.device, "tp": q.candidate.tp,
                            "pp": q.candidate.pp, "batch": q.candidate.batch, "latency_s": q.candidate.latency_s,
                            "source": q.candidate.source, "detail": q.candidate.detail}
                           for q in p.placements]}


def _member_load(pool: PoolEntry, op: str) -> float:
    return sum(m.load for m in pool.ops if m.op == op)


def placement_json(plan: Plan) -> dict[str, Any]:
    """What the IR's apply-plan pass reads: one placement per granular op (its largest share)."""
    return {
        "schema": PLACEMENT_SCHEMA,
        "placements": {
            p.name: {"device": p.candidate.device, "tp": p.candidate.tp, "pp": p.candidate.pp,
                     "batch": p.candidate.batch, "replicas": p.replicas, "pool": p.pool}
            for p in plan.ops
        },
    }


def pool_entries(graph: PlanningGraph, pools: dict[str, PoolSize]) -> tuple[PoolEntry, ...]:
    """The checker's sized pools as plan-file entries."""
    out = []
    for p in pools.values():
        first = graph.op(p.members[0].op)
        c = first.candidates[p.members[0].candidate]
        role = "shared" if p.key.op is None else first.kind.split(".", 1)[-1] if first.kind.startswith("llm.") \
            else "moe"
        out.append(PoolEntry(p.name, p.key.device, p.key.tp, p.key.pp, p.key.engine, p.replicas,
                             tuple(PoolMember(m.op, m.share, m.load) for m in p.members), p.key.engine_version,
                             c.batch if p.key.op is not None else 1, role, p.usd_h_per_replica,
                             first.model if p.key.op is not None else None,
                             first.dtype if p.key.op is not None else None))
    return tuple(sorted(out, key=lambda e: (e.role != "shared", e.device, e.name)))


def plan(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
         explain: bool = False, time_limit_s: float = 60.0) -> Plan:
    """The MILP's plan for the specs, checked and with baselines; `terrazzo.verify.replan.verified_plan`
    also simulates it and re-plans on a miss."""
    return plan_graph(build(agent, workload, sla, cluster, catalog), agent.name, explain, time_limit_s)


def plan_graph(graph: PlanningGraph, name: str, explain: bool = False, time_limit_s: float = 60.0,
               with_baselines: bool = True) -> Plan:
    plan, sol = solved_plan(graph, name, explain, time_limit_s)
    return with_baselines_of(plan, graph, sol) if with_baselines else plan


def with_baselines_of(plan: Plan, graph: PlanningGraph, sol: Solution) -> Plan:
    """`plan` (solved from `graph` as `sol`) with its baselines: the verification loop prices them only for
    the plan it keeps, not for every round (0.8 s a round at 1,000 ops)."""
    return replace(plan, baselines=tuple(baselines(graph, sol)))


def solved_plan(graph: PlanningGraph, name: str, explain: bool = False,
                time_limit_s: float = 60.0) -> tuple[Plan, Solution]:
    """The MILP's plan for `graph`, checked, without baselines, and the solution it came from."""
    sol = solve_milp(graph, time_limit_s=time_limit_s)
    if sol.assignment is None:
        if sol.status == "Time limit reached":
            raise PlanInfeasible(f"HiGHS found no feasible plan within its {time_limit_s:g} s time limit; "
                                 "raise --time-limit")
        raise PlanInfeasible(explain_infeasible(graph))
    verdict = check(graph, sol.assignment)
    if not verdict.ok:  # the solver's word is not enough: never hand out a plan that fails the check
        raise PlanInfeasible("the solver's plan fails the independent check: " + "; ".join(verdict.violations))
    return plan_from(graph, name, sol, verdict, (), runner_ups(graph, sol.assignment) if explain else {}), sol


def plan_from(graph: PlanningGraph, name: str, sol: Solution, verdict: Verdict, base: tuple[Baseline, ...] = (),
              explain: dict[str, str] | None = None) -> Plan:
    """A Plan of a checked assignment: its pools as the checker sized them."""
    assert sol.assignment is not None
    gap = 0.0 if sol.status == "Optimal" else sol.gap
    fleet = fleet_decision(graph, verdict.devices,
                           graph.penalty_usd_h_per_s * verdict.slack_s if verdict.slack_s else 0.0)
    kv = kv_entries(graph, sol.assignment, verdict.usd_h) if any(
        c.kv is not None for o in graph.ops for c in o.candidates) else {}  # KV reuse: the per-op choice
    return Plan(
        name, graph.rate_per_s, graph.deadline_s, _placed(graph, sol.assignment, verdict), fleet.usd_h,
        verdict.e2e_latency_s, _output_tokens_per_s(graph, sol.assignment), base, sol.status, explain or {},
        pools=pool_entries(graph, verdict.pools), solver_gap=gap, solver_s=sol.solve_s, percentile=graph.percentile,
        notes=graph.notes, fleet=fleet, power_kw=fleet_power_kw(graph, verdict.pools),
        energy_j_per_request=energy_j_per_request(graph, verdict.pools), kv=kv,
    )


def _placed(graph: PlanningGraph, a: Assignment, verdict: Verdict) -> tuple[PlacedOp, ...]:
    out = []
    for o in graph.ops:
        if o.name not in a.placements:
            continue
        places = tuple(Placement(pool_key(o, o.candidates[s.candidate]).name, s.share, o.candidates[s.candidate])
                       for s in a.placements[o.name])
        main = max(places, key=lambda p: p.share)
        replicas = verdict.pools[main.pool].replicas
        ttft = (first_token_tail_s(graph, o.name, main.candidate, replicas, main.share)
                if main.candidate.first_token_s is not None else None)
        out.append(PlacedOp(o.name, o.kind, o.node, places, o.visits, verdict.finish_s.get(o.name, 0.0),
                            replicas, ttft))
    return tuple(out)


def _output_tokens_per_s(graph: PlanningGraph, a: Assignment) -> float:
    return sum(graph.rate_per_s * o.visits * o.output_tokens for o in graph.ops
               if o.name in a.placements and o.kind in ("llm.decode", "llm.aggregated"))


def _is_llm(op: str, graph: PlanningGraph) -> bool:
    return graph.op(op).kind.startswith(("llm.", "moe."))


def baselines(graph: PlanningGraph, main: Solution | None = None) -> list[Baseline]:
    """Best homogeneous aggregated, best homogeneous disaggregated, and H100::H100 — the LLM ops
    restricted, everything else free — on the same planning graph.

    They reuse it: without an inventory, LLM ops sit on dedicated pools whose cost does not depend on any
    other op, so a restriction's optimum without the deadline is the non-LLM optimum (solved once) plus
    each LLM op's cheapest allowed column; when that passes the check it is the restricted optimum. Only
    a restriction where the deadline binds, or a fleet an inventory couples, is solved as a MILP."""
    accelerators = sorted({c.device for o in graph.ops if _is_llm(o.name, graph) for c in o.candidates})
    llm_nodes = {g.node for g in graph.groups}
    quick = _Decomposed(graph, main) if graph.mode == "unconstrained" and not graph.splits else None
    out = []
    for label, variant in (("homogeneous aggregated", "aggregated"), ("homogeneous disaggregated", "disaggregated")):
        best: Baseline | None = None
        misses: list[str] = []
        for d in accelerators:
            if d not in graph.cluster_devices:
                continue
            res = _restricted(graph, f"{label} ({d})", _llm_only_on(graph, d), dict.fromkeys(llm_nodes, variant),
                              quick)
            if res.feasible and (best is None or res.usd_h < best.usd_h):
                best = res
            elif not res.feasible:
                misses.append(f"{d}: {res.reason}")
        out.append(best or Baseline(f"best {label}", math.inf, math.inf, False,
                                    f"no single device type can serve every LLM call {variant}: "
                                    + "; ".join(misses or ["no accelerator in the cluster"])))
    why_not = cannot_apply(graph, REFERENCE_DEVICE)
    if why_not:
        out.append(Baseline("H100::H100 (paper's reference)", math.inf, math.inf, False, why_not))
        return out
    ref = graph if REFERENCE_DEVICE in graph.cluster_devices else _with_device(graph, REFERENCE_DEVICE)
    ref_quick = quick if ref is graph else (_Decomposed(ref, None) if quick is not None else None)
    out.append(_restricted(ref, "H100::H100 (paper's reference)",
                           lambda op, c: not _is_llm(op, ref) or c.device == REFERENCE_DEVICE,
                           dict.fromkeys(llm_nodes, "disaggregated"), ref_quick))
    return out


class _Decomposed:
    """The non-LLM ops' optimum without the deadline, solved once for every baseline."""

    def __init__(self, graph: PlanningGraph, main: Solution | None) -> None:
        self.graph = graph
        free = replace(graph, deadline_s=None)
        sol = main if main is not None and main.assignment is not None and _no_latency_rows(graph) else None
        if sol is None:
            sol = solve_milp(free)
        a = sol.assignment
        self.non_llm = ({} if a is None else
                        {op: s for op, s in a.placements.items() if not _is_llm(op, graph)})
        self.ok = a is not None

        self._cols: dict[str, list[tuple[float, float, int]]] = {}

    def _priced(self, op: str) -> list[tuple[float, float, int]]:
        """(fleet $/h, latency, candidate) of each usable candidate of a dedicated op, cheapest first."""
        if op not in self._cols:
            g, o = self.graph, self.graph.op(op)
            self._cols[op] = sorted((c.usd_h * min_replicas(g, op, c), c.latency_s, k)
                                    for k, c in enumerate(o.candidates)
                                    if c.feasible and c.device in g.cluster_devices
                                    and first_token_attainable(g, op, c))
        return self._cols[op]

    def solve(self, allow: Allow, variants: dict[str, str]) -> Assignment | str | None:
        """The restriction's optimum without the deadline; the name of an op no allowed column can serve
        (then the restriction is infeasible: the MILP would have no column for it either); or None when
        the non-LLM optimum itself failed (the caller solves the MILP)."""
        if not self.ok:
            return None
        g = self.graph
        chosen = dict(self.non_llm)
        grouped = {o for gr in g.groups for ops in gr.variants.values() for o in ops}
        wanted = [op for group in g.groups for op in group.variants.get(variants.get(group.node, ""), ())]
        wanted += [o.name for o in g.ops if o.name not in grouped and o.name not in chosen and _is_llm(o.name, g)]
        for op in wanted:
            o = g.op(op)
            pick = next((k for _, _, k in self._priced(op) if allow(op, o.candidates[k])), None)
            if pick is None:
                return op
            chosen[op] = (Share(pick, 1.0),)
        return Assignment(chosen)


def _no_latency_rows(graph: PlanningGraph) -> bool:
    """Whether the deadline cannot bind (so the unconstrained optimum is the optimum)."""
    return graph.deadline_s is None


def _with_device(graph: PlanningGraph, device: str) -> PlanningGraph:
    return replace(graph, cluster_devices=(*graph.cluster_devices, device))


def _llm_only_on(graph: PlanningGraph, device: str) -> Allow:
    """LLM ops on `device` only, the rest anywhere: a homogeneous baseline."""
    return lambda op, c: not _is_llm(op, graph) or c.device == device


def _restricted(graph: PlanningGraph, name: str, allow: Allow, variants: dict[str, str],
                quick: _Decomposed | None = None) -> Baseline:
    if quick is not None:
        a = quick.solve(allow, variants)
        if isinstance(a, str):
            return Baseline(name, math.inf, math.inf, False, no_allowed_column(graph, a, allow))
        if a is not None:
            v = check(graph, a)
            if v.ok:
                return Baseline(name, v.usd_h, v.e2e_latency_s, True)
    sol = solve_milp(graph, allow, variants)
    if sol.assignment is None:
        return Baseline(name, math.inf, math.inf, False, why_infeasible(graph, allow, variants, sol.status))
    v = check(graph, sol.assignment)
    return Baseline(name, v.usd_h, v.e2e_latency_s, v.ok, "; ".join(v.violations))


def runner_ups(graph: PlanningGraph, a: Assignment) -> dict[str, str]:
    """Per op: the best candidate on another device type with everything else fixed, and why it lost."""
    base = check(graph, a)
    out = {}
    for name in a.placements:
        op = graph.op(name)
        current = a.candidate(graph, name)
        best: tuple[float, str] | None = None
        for j, c in enumerate(op.candidates):
            if c.device == current.device or c.device not in graph.cluster_devices:
                continue
            if not c.feasible:
                why = c.reason
                score = math.inf
            else:
                v = check(graph, Assignment({**a.placements, name: (Share(j, 1.0),)}))
                score = v.usd_h
                why = (f"+${v.usd_h - base.usd_h:.2f}/h" if v.ok
                       else "; ".join(x for x in v.violations if name in x or "end-to-end" in x))
            if best is None or score < best[0]:
                best = (score, f"{c.label}: {why}")
        out[name] = (best[1] if best else "no alternative device type") + "; " + robustness(op, current, graph)
    return out
