"""Re-check a plan file against the inputs it records, as every consumer does before using it.

`simulate`, `run`, `serve`, `deploy` and `terrazzo check` rebuild the planning graph from the plan's
own specs (agent, workload, SLA, cluster, profiles) at its recorded rate and burstiness, map each pool
back to the candidate the cost model prices for it, and run the independent checker
(plan/check.py) with the file's replicas. A plan that fails — hand-edited below its load, a 70B fp16
decode on a device it does not fit, a pool short of its TTFT queue — is refused with the binding
constraint named. Costs then come from the pools the checker sized, never from the file's totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanRejected, TerrazzoError
from terrazzo.plan.check import Verdict, check
from terrazzo.plan.fleet_model import Assignment, Share, pool_key
from terrazzo.plan.from_ir import Arrival, build
from terrazzo.plan.kv_candidates import kv_entries, policy_of
from terrazzo.plan.planning_graph import PlanningGraph, is_dedicated
from terrazzo.plan_file import PLAN_SCHEMA, PoolEntry, op_kv_policies, plan_pools, read_plan_json

INPUTS = ("agent", "workload", "sla", "cluster")


@dataclass(frozen=True)
class Recheck:
    path: str
    graph: PlanningGraph
    assignment: Assignment
    verdict: Verdict
    notes: tuple[str, ...] = field(default_factory=tuple)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)  # op → its KV reuse entry, re-priced here

    @property
    def usd_h(self) -> float:
        return self.verdict.usd_h

    @property
    def devices(self) -> dict[str, int]:
        return dict(sorted(self.verdict.devices.items()))


def resolve_input(name: str, base: Path | None) -> Path:
    """A plan input path: as written (relative to the working directory), else next to the plan or in
    one of its parent folders (plans are written from the repository root)."""
    p = Path(name)
    if p.is_file() or p.is_absolute():
        return p
    if base is not None:
        for folder in (base, *base.parents):
            if (folder / p).is_file():
                return folder / p
    return p


def recheck_file(path: str | Path, error: type[Exception] = PlanRejected) -> Recheck:
    p = Path(path)
    return recheck(read_plan_json(p, error), str(p), p.resolve().parent, error)


def recheck(doc: dict[str, Any], where: str, base: Path | None, error: type[Exception] = PlanRejected,
            catalog: Catalog | None = None) -> Recheck:
    """The checker's verdict on plan `doc`; `error(message)` for a file that cannot be read as a plan,
    PlanRejected (exit 1) for one the checker rejects."""
    pools = plan_pools(doc, where, error)
    inputs = doc.get("inputs") or {}
    missing = [k for k in INPUTS if k not in inputs]
    if missing:
        raise error(f"{where}: inputs: the plan does not record {', '.join(missing)}, so it cannot be re-checked; "
                    f"re-plan with `terrazzo plan ... -o {Path(where).name}`, which records them")
    graph, cat = _graph(doc, inputs, where, base, error, catalog)
    pools = [_normalised(p, i, cat, where) for i, p in enumerate(pools)]
    policies = op_kv_policies(doc, where, error)
    a = assignment_of(graph, pools, where, error, policies)
    verdict = check(graph, a)
    if not verdict.ok:
        raise PlanRejected(f"{where}: the checker rejects this plan against its recorded inputs: "
                           + "; ".join(verdict.violations[:4])
                           + ("" if len(verdict.violations) <= 4 else f" (and {len(verdict.violations) - 4} more)")
                           + f". Re-plan with `terrazzo plan ... -o {Path(where).name}`")
    notes = []
    stated = doc.get("tco_usd_h")
    if isinstance(stated, (int, float)) and abs(stated - verdict.usd_h) > 1e-6 * max(1.0, verdict.usd_h):
        notes.append(f"the file states ${stated:.2f}/h; its pools cost ${verdict.usd_h:.2f}/h, which is used")
    kv = kv_entries(graph, a, verdict.usd_h) if policies else {}
    notes += _kv_notes(doc, kv)
    return Recheck(where, graph, a, verdict, tuple(notes), kv)


def _kv_notes(doc: dict[str, Any], kv: dict[str, dict[str, Any]]) -> list[str]:
    """Where the file's KV numbers differ from the ones re-priced from its inputs (which are used)."""
    out = []
    for op in doc.get("ops") or []:
        mine, theirs = kv.get(op.get("name", "")), op.get("kv")
        if mine is None or theirs is None:
            continue
        for k in ("prefix_tokens", "new_tokens", "hold_s", "hit_rate", "saving_usd_h"):
            a, b = theirs.get(k), mine.get(k)
            if (a is None) != (b is None) or (a is not None and b is not None and abs(a - b) > 1e-6 * max(1.0, abs(b))):
                out.append(f"{op['name']}: the file states kv.{k} = {a}; re-priced from its inputs it is {b}, "
                           "which is used")
    return out


def _normalised(p: PoolEntry, i: int, cat: Catalog, where: str) -> PoolEntry:
    from dataclasses import replace

    from terrazzo.errors import CatalogError

    try:
        return replace(p, device=cat.device(p.device).name)
    except CatalogError as exc:
        raise PlanRejected(f"{where}: pools[{i}].device: {exc}") from None


def _graph(doc: dict[str, Any], inputs: dict[str, Any], where: str, base: Path | None, error: type[Exception],
           catalog: Catalog | None) -> tuple[PlanningGraph, Catalog]:
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload

    paths = {k: resolve_input(str(inputs[k]), base) for k in INPUTS}
    profiles = [resolve_input(str(v), base) for k, v in sorted(inputs.items()) if k.startswith("profile[")]
    for k, p in paths.items():
        if not p.is_file():
            raise error(f"{where}: inputs.{k}: '{inputs[k]}' was not found (looked relative to the working "
                        f"directory and to the plan's folder); run from the folder the plan was made in")
    try:
        cluster, cat = load_cluster(paths["cluster"], profiles)
        cat = catalog or cat
        agent = load_agent(paths["agent"], cat)
        workload = load_workload(paths["workload"], agent)
        sla = load_sla(paths["sla"], agent)
    except TerrazzoError as exc:
        raise error(f"{where}: a spec the plan names no longer loads: {exc}") from None
    w = doc.get("workload") or {}
    rate = float(doc.get("rate_per_s") or w.get("rate_per_s") or 0.0)
    arrival = Arrival(rate, float(w.get("arrival_scv", Arrival.of(workload).scv) or 1.0), str(w.get("source", "")))
    try:
        return build(agent, workload, sla, cluster, cat, arrival, prune_candidates=False), cat
    except TerrazzoError as exc:
        raise error(f"{where}: its specs do not compile to a planning graph: {exc}") from None


def assignment_of(graph: PlanningGraph, pools: list[PoolEntry], where: str, error: type[Exception],
                  kv_policies: dict[str, str] | None = None) -> Assignment:
    """The plan's pools as an assignment of the planning graph: each member op on the candidate the cost
    model prices for the pool's device, parallelism, batch and engine (and the op's KV policy, absent =
    recompute), with the file's replicas."""
    names = {o.name for o in graph.ops}
    placements: dict[str, list[Share]] = {}
    replicas: dict[str, int] = {}
    for i, p in enumerate(pools):
        for j, m in enumerate(p.ops):
            if m.op not in names:
                raise PlanRejected(f"{where}: pools[{i}].ops[{j}].op: '{m.op}' is not an op of the agent the plan "
                                   f"records; re-plan it")
            o = graph.op(m.op)
            policy = (kv_policies or {}).get(m.op, "recompute")
            named = p.name.rsplit("-kv-", 1)[1] if "-kv-" in p.name else "recompute"
            if is_dedicated(o.kind) and named != policy:  # the pool's own name says how it keeps prefixes
                raise PlanRejected(f"{where}: pools[{i}] ({p.name}) keeps prefixes by '{named}' but op '{m.op}' "
                                   f"records kv.policy '{policy}'; re-plan with `terrazzo plan ... -o`")
            k = _candidate(graph, m.op, p, policy)
            if k is None:
                have = sorted({c.label for c in o.candidates if c.device == p.device})[:6]
                raise PlanRejected(f"{where}: pools[{i}] ({p.name}): the cost model has no candidate "
                                   f"{p.device} tp{p.tp} pp{p.pp} b{p.batch} ({p.engine}) for op '{m.op}'"
                                   + (f" (it prices {', '.join(have)})" if have else
                                      f" ({p.device} is not priced for it)"))
            placements.setdefault(m.op, []).append(Share(k, m.share))
            key = pool_key(o, o.candidates[k]).name
            if replicas.get(key, p.replicas) != p.replicas:
                raise PlanRejected(f"{where}: pools[{i}] ({p.name}): two pools of the file are the same pool "
                                   f"{key} with different replicas")
            replicas[key] = p.replicas
    return Assignment({op: tuple(s) for op, s in placements.items()}, replicas)


def _candidate(graph: PlanningGraph, op: str, p: PoolEntry, kv_policy: str = "recompute") -> int | None:
    o = graph.op(op)
    ded = is_dedicated(o.kind)
    match = [k for k, c in enumerate(o.candidates)
             if c.device == p.device and c.tp == p.tp and c.pp == p.pp and c.engine == p.engine
             and c.engine_version == p.engine_version and (not ded or c.batch == p.batch)
             and policy_of(c) == kv_policy]
    if not match:
        return None
    feasible = [k for k in match if o.candidates[k].feasible]
    return (feasible or match)[0]


def is_plan(doc: dict[str, Any]) -> bool:
    return doc.get("schema") == PLAN_SCHEMA
