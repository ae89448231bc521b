"""What a simulation needs from a plan: its pools (device, parallelism, batch, replicas, the ops they
serve and their shares), each op's placements and predicted latency, and the specs it was planned from
(agent, workload, SLA, cluster), found through the plan's `inputs` and loaded with the same loaders the
planner uses. The plan's $/h is recomputed from its pools and the catalog, not read from the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.errors import SimError, TerrazzoError
from terrazzo.plan.recheck import resolve_input
from terrazzo.plan_file import PoolEntry, op_shares, plan_pools, read_plan_json
from terrazzo.sim.kv_lanes import KV_POLICIES as KV_REUSE_POLICIES
from terrazzo.sim.kv_lanes import KvOpPolicy
from terrazzo.sim.schedulers import KV_POLICIES, POLICIES, Scheduler, engine_scheduler
from terrazzo.spec.agent import Agent, LlmNode
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

INPUTS = ("agent", "workload", "sla", "cluster")
PREVIOUS_TOKEN_BUDGET = 8192  # prompt tokens per prefill iteration in plans that name no scheduler
SCHEDULER_FIELDS = ("policy", "kv", "max_num_seqs", "max_batched_tokens", "block_size", "kv_blocks")


@dataclass(frozen=True)
class PlannedOp:
    """One op of the plan on one of its pools (`pool`, carrying `share` of the op's visits)."""

    name: str
    kind: str
    node: str
    device: str
    tp: int
    pp: int
    batch: int
    replicas: int
    visits: float
    latency_s: float
    usd_h: float
    pool: str = ""
    share: float = 1.0
    scheduler: Scheduler = field(default_factory=Scheduler)
    kv: KvOpPolicy = field(default_factory=KvOpPolicy)  # plan v2 `ops[].kv`; absent: recompute

    @property
    def label(self) -> str:
        par = f" tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "")
        return f"{self.device}{par} ×{self.replicas}"


@dataclass
class SimModel:
    name: str
    plan: dict[str, Any]
    agent: Agent
    workload: Workload
    sla: Sla
    cluster: Cluster
    catalog: Catalog
    ops: dict[str, PlannedOp]
    rate_per_s: float
    deadline_s: float | None
    usd_h: float
    source: str = ""
    by_node: dict[str, list[PlannedOp]] = field(default_factory=dict)
    input_paths: dict[str, Path] = field(default_factory=dict)
    pools: dict[str, PoolEntry] = field(default_factory=dict)
    placements: dict[str, list[PlannedOp]] = field(default_factory=dict)  # op → one PlannedOp per pool it uses
    # bytes per visit between two ops as the planner priced them, when the caller holds its planning
    # graph (the planner's own check); None: simulation.planned_edges rebuilds the graph from the specs
    edge_bytes: dict[tuple[str, str], float] | None = None

    @property
    def percentile(self) -> float:
        return self.sla.end_to_end.percentile if self.sla.end_to_end else 99.0


def _ops(plan: dict[str, Any], pools: dict[str, PoolEntry]) -> dict[str, list[PlannedOp]]:
    """op → its placements, one per pool, largest share first."""
    shares = op_shares(list(pools.values()))
    out: dict[str, list[PlannedOp]] = {}
    try:
        for o in plan["ops"]:
            name = o["name"]
            lat = {q["pool"]: float(q.get("latency_s", o["latency_s"])) for q in o.get("placements", [])}
            batch = {q["pool"]: int(q.get("batch", o.get("batch", 1))) for q in o.get("placements", [])}
            mine = shares.get(name)
            if not mine:
                raise SimError(f"plan op '{name}' is on no pool; re-plan with `terrazzo plan ... -o plan.json`")
            out[name] = [PlannedOp(name, o["kind"], o["node"], p.device, p.tp, p.pp, batch.get(p.name, p.batch),
                                   p.replicas, float(o["visits"]), lat.get(p.name, float(o["latency_s"])),
                                   p.usd_h, p.name, share,
                                   scheduler_of(o, {"engine": p.engine, "engine_version": p.engine_version, **p.extra},
                                                batch.get(p.name, p.batch)), kv_policy_of(o))
                         for p, share in sorted(mine, key=lambda x: -x[1])]
    except (KeyError, TypeError, ValueError) as exc:
        raise SimError(f"plan ops are malformed ({exc!r}); write the plan with `terrazzo plan ... -o plan.json`"
                       ) from None
    missing = sorted(set(shares) - set(out))
    if missing:
        raise SimError(f"plan pools serve ops the plan does not list ({', '.join(missing)}); re-plan it")
    return out


def kv_policy_of(op: dict[str, Any]) -> KvOpPolicy:
    """An op's `kv` entry (plan file v2, written by the planner): what the replica keeps after the call."""
    raw = op.get("kv")
    if raw is None:
        return KvOpPolicy()
    where = f"plan op '{op.get('name', '?')}'"
    if not isinstance(raw, dict):
        raise SimError(f"{where}: field 'kv' must be an object with a 'policy'; re-plan to refresh the plan")
    policy = raw.get("policy", "recompute")
    if policy not in KV_REUSE_POLICIES:
        raise SimError(f"{where}: field 'kv.policy' is {policy!r}; use one of {', '.join(KV_REUSE_POLICIES)}")
    hit = raw.get("hit_rate")
    try:
        return KvOpPolicy(policy, float(hit) if hit is not None else None)
    except (TypeError, ValueError):
        raise SimError(f"{where}: field 'kv.hit_rate' must be a number in [0, 1], got {hit!r}") from None


def scheduler_of(op: dict[str, Any], pool: dict[str, Any] | None, batch: int) -> Scheduler:
    """The engine and scheduler a plan's LLM op runs under, from its own record or its pool's (v2 fields:
    `engine`, `engine_version`, `scheduler` as a policy name or an object of SCHEDULER_FIELDS).

    Absent (every v1 plan): the policy the plan was priced with: whole prompts first, up to 8,192 prompt
    tokens per iteration, whole context reserved, at most the planned batch running. A named engine
    brings its defaults (schedulers.ENGINE_DEFAULTS); explicit fields override them."""
    rec = {**(pool or {}), **{k: v for k, v in op.items() if v is not None}}
    where = f"plan op '{op.get('name', '?')}'"
    engine: EngineVersion | None = None
    if rec.get("engine") is not None:
        try:
            engine = EngineVersion(Engine(str(rec["engine"]).lower()), str(rec.get("engine_version") or ""))
        except ValueError:
            raise SimError(f"{where}: field 'engine' is {rec['engine']!r}; use one of "
                           f"{', '.join(e.value for e in Engine)}") from None
    raw = rec.get("scheduler")
    fields: dict[str, Any] = {"policy": raw} if isinstance(raw, str) else dict(raw or {})
    unknown = sorted(set(fields) - set(SCHEDULER_FIELDS))
    if unknown:
        raise SimError(f"{where}: unknown field 'scheduler.{unknown[0]}'; the scheduler's fields are "
                       f"{', '.join(SCHEDULER_FIELDS)}")
    if fields.get("policy") is not None and fields["policy"] not in POLICIES:
        raise SimError(f"{where}: field 'scheduler.policy' is {fields['policy']!r}; use one of {', '.join(POLICIES)}")
    if fields.get("kv") is not None and fields["kv"] not in KV_POLICIES:
        raise SimError(f"{where}: field 'scheduler.kv' is {fields['kv']!r}; use one of {', '.join(KV_POLICIES)}")
    try:
        ints = {k: int(fields[k]) for k in SCHEDULER_FIELDS[2:] if fields.get(k) is not None}
    except (TypeError, ValueError):
        raise SimError(f"{where}: the scheduler's counts ({', '.join(SCHEDULER_FIELDS[2:])}) must be whole "
                       f"numbers") from None
    seqs = ints.pop("max_num_seqs", max(1, batch))
    try:
        if engine is None:
            previous: dict[str, Any] = {"policy": fields.get("policy") or "prefill-first",
                                        "kv": fields.get("kv") or "reserve",
                                        "max_batched_tokens": PREVIOUS_TOKEN_BUDGET}
            return Scheduler(max_num_seqs=seqs, **{**previous, **ints})
        return engine_scheduler(engine, seqs, policy=fields.get("policy"), kv=fields.get("kv"), **ints)
    except ValueError as exc:
        raise SimError(f"{where}: {exc}") from None


def fleet_usd_h(pools: dict[str, PoolEntry], cluster: Cluster, catalog: Catalog) -> float:
    """$/h of the plan's pools at the catalog's prices, by the planner's rule (plan/fleet_model.py)."""
    from terrazzo.cost.tco import device_usd_per_hour

    devices: dict[str, int] = {}
    for p in pools.values():
        devices[p.device] = devices.get(p.device, 0) + p.devices
    total = 0.0
    for device, n in devices.items():
        cost = device_usd_per_hour(catalog, device, cluster.tco_profile, cluster.price_profile)
        if cluster.mode == "own-and-buy":
            owned = min(n, cluster.inventory.get(device, 0))
            total += owned * (cost.power_usd_h + cost.host_usd_h) + (n - owned) * cost.usd_h
        else:
            total += n * cost.usd_h
    return total


def model_from_specs(plan: dict[str, Any], agent: Agent, workload: Workload, sla: Sla, cluster: Cluster,
                     catalog: Catalog, source: str = "") -> SimModel:
    """A plan JSON and the specs it was made from (already loaded)."""
    pools = {p.name: p for p in plan_pools(plan, source or "plan", SimError)}
    placements = _ops(plan, pools)
    ops = {name: places[0] for name, places in placements.items()}
    by_node: dict[str, list[PlannedOp]] = {}
    leaves = {path for path, _ in agent.graph.leaves()}
    for op in ops.values():
        if op.node not in leaves:
            raise SimError(f"plan op '{op.name}' is for node '{op.node}', which agent '{agent.name}' does not have; "
                           "re-plan with the agent the plan names")
        by_node.setdefault(op.node, []).append(op)
    for path, node in agent.graph.leaves():
        mine = by_node.get(path, [])
        if isinstance(node, LlmNode):
            roles = {o.kind.removeprefix("llm.") if o.kind.startswith("llm.") else o.name.rsplit(".", 1)[-1]
                     for o in mine}
            ok = "aggregated" in roles or {"prefill", "decode"} <= roles
        else:
            ok = bool(mine) or node.kind in ("branch", "loop")
        if not ok:
            have = ", ".join(o.name for o in mine) or "none"
            raise SimError(f"the plan places no complete set of ops for node '{path}' of agent '{agent.name}' "
                           f"(has: {have}); re-plan with the agent the plan names")
    return SimModel(str(plan.get("agent", agent.name)), plan, agent, workload, sla, cluster, catalog, ops,
                    float(plan.get("rate_per_s") or 0.0), plan.get("deadline_s"),
                    fleet_usd_h(pools, cluster, catalog), source, by_node, pools=pools, placements=placements)


def model_from_plan(plan: dict[str, Any], base: Path | None = None, source: str = "") -> SimModel:
    """Load the specs a plan JSON names in `inputs` and build the model."""
    from terrazzo.spec.profiled_devices import with_profiled_devices
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload

    inputs = plan.get("inputs") or {}
    missing = [k for k in INPUTS if k not in inputs]
    if missing:
        raise SimError(f"the plan does not record its inputs ({', '.join(missing)} missing); re-plan with "
                       f"`terrazzo plan ... -o plan.json`, which records them")
    paths = {k: resolve_input(inputs[k], base) for k in INPUTS}
    for k, p in paths.items():
        if not p.is_file():
            raise SimError(f"the plan's {k} spec '{inputs[k]}' was not found (looked relative to the working "
                           f"directory and to the plan's folder); run from the folder the plan was made in")
    profiles = [resolve_input(v, base) for k, v in sorted(inputs.items()) if k.startswith("profile[")]
    try:
        cluster, catalog = load_cluster(paths["cluster"], profiles)
        cluster = with_profiled_devices(cluster, catalog)[0]  # as `terrazzo plan --profile` planned it
        agent = load_agent(paths["agent"], catalog)
        workload = load_workload(paths["workload"], agent)
        sla = load_sla(paths["sla"], agent)
    except TerrazzoError as exc:
        raise SimError(f"a spec the plan names no longer loads: {exc}") from None
    model = model_from_specs(plan, agent, workload, sla, cluster, catalog, source)
    model.input_paths = paths
    return model


def load_model(plan_path: str | Path) -> SimModel:
    p = Path(plan_path)
    return model_from_plan(read_plan_json(p, SimError), p.resolve().parent, str(p))
