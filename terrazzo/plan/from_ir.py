"""The planner's input read off the estimated IR: placeable ops with their `#tz.cand` candidates, the
edges between them (routers and riders contracted, loop repeats dropped), and both serving variants
of every LLM call whose spec lets the planner choose.

The IR is the single place candidates are priced (terrazzo/ir/candidate_pricing.py); this module only reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, OpResult, SSAValue

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.energy import power_curve
from terrazzo.cost.network import scale_out_link
from terrazzo.cost.serving_model import spread_for
from terrazzo.cost.tco import device_usd_per_hour, financing_terms
from terrazzo.ir.attributes import CandidateAttr, DistAttr, KvType
from terrazzo.ir.candidate_pricing import PLACEABLE, CostModel
from terrazzo.ir.context import make_context
from terrazzo.ir.dialects import granular_dialect as G
from terrazzo.ir.dialects.agent_dialect import LlmCallOp, LoopOp, OutputOp, SubagentOp
from terrazzo.ir.dialects.node_op import NodeOp, str_prop
from terrazzo.ir.driver import DECOMPOSE, make_pass, run_pipeline
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.module_graph import INPUT, OUTPUT, is_transfer, source
from terrazzo.ir.passes.estimate_cost import annotate
from terrazzo.plan.fleet_model import first_token_service_s
from terrazzo.plan.planning_graph import (
    REFERENCE_DEVICE,
    OpCandidate,
    PlanEdge,
    PlanningGraph,
    PlanOp,
    VariantGroup,
    is_dedicated,
    llm_capacity,
    prune,
)
from terrazzo.spec.agent import Agent, AgentGraph, LlmNode, SubagentNode
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload


@dataclass(frozen=True)
class _Use:
    src: str
    dst: str
    data_bytes: float
    kv: bool


def estimated_module(agent: Agent, cost_model: CostModel) -> ModuleOp:
    """agent → granular (every decomposition) → estimated, the `--emit estimated` stage of the compiler."""
    module = agent_to_module(agent, cost_model.catalog)
    run_pipeline(module, [make_pass(p) for p in DECOMPOSE], make_context(cost_model.catalog))
    annotate(module, cost_model)
    return module


def build(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog,
          arrival: Arrival | None = None, prune_candidates: bool = True, kv_reuse: bool = True) -> PlanningGraph:
    """The planning graph of the specs. `arrival` overrides the rate and burstiness the workload states
    (a trace's measured ones: verify/replan.py measures them); `prune_candidates=False` keeps every
    candidate (the brute-force tests compare against it). Calls that name a prefix get its reuse
    policies as candidates (plan/kv_candidates.py); `kv_reuse=False` prices them all as recompute."""
    agent = with_token_overrides(agent, workload)
    arrival = arrival or Arrival.of(workload)
    devices = [catalog.device(d).name for d in cluster.device_types]
    priced = list(dict.fromkeys([*devices, REFERENCE_DEVICE]))
    cost_model = CostModel(catalog, priced, catalog.tco_profile(cluster.tco_profile), cluster.fabric,
                           cluster.price_profile, None if sla.mode == "offline" else sla, keep_all=True)
    disaggregated = estimated_module(agent, cost_model)
    auto = {path for path, n in agent.graph.leaves() if isinstance(n, LlmNode) and n.serving == "auto"}
    aggregated = estimated_module(_serving(agent, "aggregated"), cost_model) if auto else None

    tails = _FirstToken(sla, arrival.scv)
    memo: dict[tuple, tuple] = {}
    ops = {op.node_id: tails.apply(_plan_op(op, prune_candidates=prune_candidates, memo=memo), op)
           for op in disaggregated.walk() if isinstance(op, PLACEABLE)}
    uses = _contract(disaggregated, set(ops))
    groups = []
    llm_nodes = {op.node_id.rsplit(".", 1)[0] if not isinstance(op, LlmCallOp) else op.node_id
                 for op in disaggregated.walk() if isinstance(op, PLACEABLE) and str_prop(op, "dtype")}
    for node in sorted(llm_nodes):
        split = tuple(name for name in ops if name.startswith(f"{node}.") and name.rsplit(".", 1)[0] == node)
        whole = node if node in ops else None
        variants: dict[str, tuple[str, ...]] = {}
        if split:
            variants["disaggregated"] = split
        if whole:
            variants["aggregated"] = (whole,)
        if node in auto and aggregated is not None:
            agg = next(op for op in aggregated.walk() if isinstance(op, LlmCallOp) and op.node_id == node)
            name = f"{node}.aggregated"
            ops[name] = tails.apply(_plan_op(agg, name, prune_candidates, memo), agg)
            variants["aggregated"] = (name,)
            uses += [_Use(u.src, name, u.data_bytes, False) for u in uses if u.dst in split and u.src not in split]
            uses += [_Use(name, u.dst, u.data_bytes, False) for u in uses if u.src in split and u.dst not in split]
        for op_name in (o for v in variants.values() for o in v):
            ops[op_name] = _with_variant(ops[op_name], "aggregated" if (op_name,) == variants.get("aggregated")
                                         else "disaggregated")
        groups.append(VariantGroup(node, variants))
    costs = {d: device_usd_per_hour(catalog, d, cluster.tco_profile, cluster.price_profile) for d in priced}
    links = {d: scale_out_link(catalog.device(d), cluster.fabric).bw_bytes_s for d in priced}
    deadline = sla.end_to_end.latency_s if sla.end_to_end and sla.mode == "interactive" else None
    edges = tuple(dict.fromkeys(PlanEdge(u.src, u.dst, u.data_bytes, "kv" if u.kv else "data") for u in uses))
    graph = PlanningGraph(
        tuple(ops.values()), edges, tuple(groups), arrival.rate_per_s, deadline,
        sla.utilisation_cap, sla.penalty_usd_h_per_s, costs, links, cluster.fabric.scale_out_latency_s,
        tuple(devices), {catalog.device(d).name: n for d, n in cluster.inventory.items()},
        tuple(catalog.device(d).name for d in cluster.buy), cluster.mode, tails.percentile,
        power={d: power_curve(catalog.device(d)) for d in priced}, pue=catalog.tco_profile(cluster.tco_profile).pue,
        max_kw=cluster.max_kw, max_devices=cluster.max_devices,
        financing=financing_terms(catalog.tco_profile(cluster.tco_profile)), notes=arrival.notes,
        split=cluster.split,
    )
    return _with_kv(graph, agent, workload, sla, catalog, cluster, kv_reuse)


def _with_kv(graph: PlanningGraph, agent: Agent, workload: Workload, sla: Sla, catalog: Catalog, cluster: Cluster,
             reuse: bool) -> PlanningGraph:
    """KV reuse: the first-token ops of calls that name a prefix, priced per policy (plan/kv_sites.py)."""
    if not any(isinstance(n, LlmNode) and n.prefix for _, n in agent.graph.leaves()):
        return graph  # no call names a prefix: today's graph, untouched
    from terrazzo.plan.kv_candidates import catalog_tiers, cost_model_pricer, with_kv_options
    from terrazzo.plan.kv_sites import kv_sites

    sites = kv_sites(agent, workload, sla, graph)
    return with_kv_options(graph, sites, cost_model_pricer(catalog, cluster.fabric), catalog_tiers(catalog), reuse)


@dataclass(frozen=True)
class Arrival:
    """The traffic a plan is sized for: mean rate and the squared CV of the gaps between arrivals."""

    rate_per_s: float
    scv: float = 1.0
    source: str = "workload"
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, workload: Workload) -> Arrival:
        a = workload.arrival
        if a.process == "trace" and not a.rate_per_s:
            return cls(0.0, 1.0, f"trace:{a.trace}", (
                f"workload '{workload.name}' replays trace {a.trace} without a rate: planned at 0 req/s (one "
                "replica per pool, not verified); plan through verify.replan, which measures the trace",))
        scv = a.cv ** 2 if a.process == "gamma" else 1.0
        return cls(float(a.rate_per_s or 0.0), scv, a.process)

    def to_json(self) -> dict[str, object]:
        return {"rate_per_s": self.rate_per_s, "arrival_scv": self.scv, "source": self.source}


class _FirstToken:
    """Marks first-token ops (prefill, aggregated) with their TTFT limit and their prompt's tail, and
    rules out candidates whose service of the percentile prompt alone misses the limit."""

    SAMPLES = 20_000  # draws per prompt distribution: the p99 to well under 1 %

    def __init__(self, sla: Sla, arrival_scv: float = 1.0) -> None:
        self.sla = sla if sla.mode == "interactive" else None
        self.percentile = sla.end_to_end.percentile if sla.end_to_end else 99.0
        self.arrival_scv = arrival_scv

    def apply(self, plan_op: PlanOp, op: NodeOp) -> PlanOp:
        limit = self.sla.limits_for(plan_op.node).ttft_s if self.sla and _first_token_role(op) else None
        prompt = op.properties.get("input_tokens")
        if limit is None or not isinstance(prompt, DistAttr):
            return plan_op
        draws = np.asarray(prompt.to_dist().sample(np.random.default_rng(0), self.SAMPLES), dtype=float)
        mean = float(draws.mean()) or 1.0
        ratio = max(float(np.percentile(draws, self.percentile)) / mean, 1.0)
        scv = float(draws.var()) / mean**2
        hold_scv = None
        answer = op.properties.get("output_tokens")
        if plan_op.kind == "llm.aggregated" and isinstance(answer, DistAttr):  # a slot is held for the answer
            out = np.asarray(answer.to_dist().sample(np.random.default_rng(1), self.SAMPLES), dtype=float)
            hold_scv = float(out.var()) / max(float(out.mean()), 1.0) ** 2
        tailed = replace(plan_op, first_token_limit_s=limit, work_tail_ratio=ratio, work_scv=scv,
                         arrival_scv=self.arrival_scv, hold_scv=hold_scv)
        return replace(tailed, candidates=tuple(self._judge(c, tailed, prompt.mean_value) for c in tailed.candidates))

    def _judge(self, c: OpCandidate, op: PlanOp, mean_prompt: float) -> OpCandidate:
        if not c.feasible or c.first_token_s is None or op.first_token_limit_s is None:
            return c
        tail_s = first_token_service_s(op, c)
        if tail_s <= op.first_token_limit_s:
            return c
        return replace(c, feasible=False, reason=(
            f"TTFT {tail_s * 1e3:.1f} ms for the p{self.percentile:g} prompt "
            f"({op.work_tail_ratio * mean_prompt:,.0f} tokens) > {op.first_token_limit_s * 1e3:.4g} ms limit"))


def _plan_op(op: NodeOp, name: str | None = None, prune_candidates: bool = True,
             memo: dict[tuple, tuple] | None = None) -> PlanOp:
    """The op's PlanOp. `memo` shares the converted candidates between ops whose IR candidates are the
    same objects (the cost model hands ops of one configuration one list): a 1,000-op agent has a few
    dozen distinct lists, so conversion and pruning scale with configurations, not ops."""
    out_tokens = op.properties.get("output_tokens")
    osl = out_tokens.mean_value if isinstance(out_tokens, DistAttr) else 0.0
    kind = "llm.aggregated" if isinstance(op, LlmCallOp) else op.name.split(".", 1)[1]
    role = _first_token_role(op)
    attrs = op.candidates
    key = (tuple(map(id, attrs)), kind, role, osl, prune_candidates)
    hit = memo.get(key) if memo is not None else None
    if hit is None:
        steps = kind in ("llm.decode", "llm.aggregated") or (kind.startswith("moe.") and role is None)
        cands = [_candidate(c, role, osl, is_dedicated(kind), steps) for c in attrs]
        hit = (prune(cands, kind, role is not None) if prune_candidates else tuple(cands), attrs)
        if memo is not None:
            memo[key] = hit  # the value holds `attrs`, so their ids stay theirs while the memo lives
    return PlanOp(
        name or op.node_id, kind, op.node_id.rsplit(".", 1)[0] if name is None else op.node_id,
        op.visit_count, hit[0], output_tokens=osl, model=str_prop(op, "model"), dtype=str_prop(op, "dtype"),
    )


def _first_token_role(op: NodeOp) -> str | None:
    """'prefill' or 'aggregated' for the ops that produce an LLM call's first token, else None."""
    if isinstance(op, LlmCallOp):
        return "aggregated"
    phases: dict[type[NodeOp], str] = {G.PrefillOp: "prefill", G.DecodeOp: "decode"}
    phase = phases.get(type(op)) or str_prop(op, "phase")
    return "prefill" if phase == "prefill" else None


def _with_variant(op: PlanOp, variant: str) -> PlanOp:
    return replace(op, variant=variant, node=op.name.rsplit(".", 1)[0] if variant == "disaggregated" else op.node)


def _candidate(c: CandidateAttr, role: str | None, osl: float, llm: bool, steps: bool = False) -> OpCandidate:
    """A priced IR candidate; for a first-token op, also its time to the first token: a prefill's own
    latency (a batch of `batch` prompts), or an aggregated replica's lone prefill (the span less the
    decode) plus one decode step to wait out before the prompt joins. An LLM phase's capacity is the
    one definition of planning_graph.llm_capacity: batch × pp slots, each held for the span."""
    tp, pp, span = c.tp.data, c.pp.data, c.span_s.data
    first = {"prefill": span, "aggregated": span - osl * c.latency_s.data + c.latency_s.data}.get(role or "")
    rate = c.requests_per_s.data
    slots = 1
    if llm and c.feasible:
        slots, rate = llm_capacity(c.batch.data, pp, span)
    return OpCandidate(c.device.data, tp, pp, c.batch.data, span, rate, tp * pp,
                       c.usd_h.data, c.feasible, c.infeasible.data,
                       f"{c.latency_s.data * 1e3:.2f} ms at batch {c.batch.data}, {c.bound.data}-bound",
                       first_token_s=first if first is not None and math.isfinite(first) else None,
                       slots=slots, source=c.source.data, hold_s=span if llm else None,
                       tbt_s=c.latency_s.data if steps else None,
                       spread=spread_for(c.source.data, role or "decode"),
                       engine=c.engine.data, engine_version=c.engine_version.data)


def _contract(module: ModuleOp, placeable: set[str]) -> list[_Use]:
    """Edges between placeable ops, looking through routers (branch, loop), riders (MoE gate/merge),
    sub-agent boundaries and transfers; a loop's `repeat` result closes a cycle and is dropped."""
    succ: dict[str, list[tuple[str, float, bool]]] = {}

    def add(value: SSAValue, dst: str, size: float) -> None:
        if isinstance(value, OpResult) and isinstance(value.op, LoopOp) and value is value.op.repeat:
            return
        kv = isinstance(value.type, KvType)
        parent = value.block.parent_op() if isinstance(value, BlockArgument) else None
        # a sub-agent's block argument: the edge enters the sub-agent, it does not leave it
        src = f"{parent.node_id}#in" if isinstance(parent, SubagentOp) else source(value, through_transfers=True)
        succ.setdefault(src, []).append((dst, size, kv))

    for op in module.walk():
        if isinstance(op, NodeOp) and not is_transfer(op):
            sizes = op.bytes_in
            dst = f"{op.node_id}#in" if isinstance(op, SubagentOp) else op.node_id
            for i, v in enumerate(op.operands):
                add(v, dst, sizes[i] if i < len(sizes) else 0.0)
        elif isinstance(op, OutputOp):
            owner = op.parent_op()
            for v in op.operands:
                add(v, owner.node_id if isinstance(owner, SubagentOp) else OUTPUT, 0.0)
    uses: list[_Use] = []
    for src in placeable:
        seen: set[str] = set()
        stack = [(d, s, kv) for d, s, kv in succ.get(src, [])]
        while stack:
            dst, size, kv = stack.pop()
            if dst in seen or dst in (INPUT, OUTPUT):
                continue
            seen.add(dst)
            if dst in placeable:
                uses.append(_Use(src, dst, size, kv))
            else:
                stack.extend((d, s, kv or k) for d, s, k in succ.get(dst, []))
    return uses


def _serving(agent: Agent, serving: str) -> Agent:
    """The agent with every `auto` LLM call pinned to `serving`."""
    def pin(graph: AgentGraph) -> AgentGraph:
        nodes = []
        for n in graph.nodes:
            if isinstance(n, LlmNode) and n.serving == "auto":
                n = n.model_copy(update={"serving": serving})
            elif isinstance(n, SubagentNode) and n.graph is not None:
                n = n.model_copy(update={"graph": pin(n.graph)})
            nodes.append(n)
        return graph.model_copy(update={"nodes": nodes})

    return agent.model_copy(update={"graph": pin(agent.graph)})


def with_token_overrides(agent: Agent, workload: Workload) -> Agent:
    """The workload's per-node token distributions replace the agent's own."""
    if not workload.tokens:
        return agent

    def apply(graph: AgentGraph, prefix: str) -> AgentGraph:
        nodes = []
        for n in graph.nodes:
            path = f"{prefix}{n.id}"
            if isinstance(n, LlmNode) and path in workload.tokens:
                o = workload.tokens[path]
                n = n.model_copy(update={k: v for k, v in (("input_tokens", o.input_tokens),
                                                             ("output_tokens", o.output_tokens)) if v is not None})
            elif isinstance(n, SubagentNode) and n.graph is not None:
                n = n.model_copy(update={"graph": apply(n.graph, f"{path}/")})
            nodes.append(n)
        return graph.model_copy(update={"nodes": nodes})

    return agent.model_copy(update={"graph": apply(agent.graph, "")})
