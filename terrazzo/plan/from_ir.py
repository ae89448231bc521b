"""The planner's input read off the estimated IR: placeable ops with their `#tz.cand` candidates, the
edges between them (routers and riders contracted, loop repeats dropped), and both serving variants
of every LLM call whose spec lets the planner choose.

The IR is the single place candidates are priced (terrazzo/ir/costing.py); this module only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, OpResult, SSAValue

from terrazzo.catalog.load import Catalog
from terrazzo.cost.network import scale_out_link
from terrazzo.cost.tco import device_usd_per_hour
from terrazzo.ir.attributes import CandidateAttr, DistAttr, KvType
from terrazzo.ir.costing import PLACEABLE, CostModel
from terrazzo.ir.dialects.agent import LlmCallOp, LoopOp, OutputOp, SubagentOp
from terrazzo.ir.dialects.base import NodeOp, str_prop
from terrazzo.ir.driver import DECOMPOSE, make_pass, run_pipeline
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.graph import INPUT, OUTPUT, is_transfer, source
from terrazzo.ir.passes.estimate_cost import annotate
from terrazzo.plan.graph import REFERENCE_DEVICE, OpCandidate, PlanEdge, PlanningGraph, PlanOp, VariantGroup, prune
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
    run_pipeline(module, [make_pass(p) for p in DECOMPOSE])
    annotate(module, cost_model)
    return module


def build(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog) -> PlanningGraph:
    agent = with_token_overrides(agent, workload)
    devices = [catalog.device(d).name for d in cluster.device_types]
    priced = list(dict.fromkeys([*devices, REFERENCE_DEVICE]))
    cost_model = CostModel(catalog, priced, catalog.tco_profile(cluster.tco_profile), cluster.fabric,
                           cluster.price_profile, None if sla.mode == "offline" else sla, keep_all=True)
    disaggregated = estimated_module(agent, cost_model)
    auto = {path for path, n in agent.graph.leaves() if isinstance(n, LlmNode) and n.serving == "auto"}
    aggregated = estimated_module(_serving(agent, "aggregated"), cost_model) if auto else None

    ops = {op.node_id: _plan_op(op) for op in disaggregated.walk() if isinstance(op, PLACEABLE)}
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
            ops[name] = _plan_op(agg, name)
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
    return PlanningGraph(
        tuple(ops.values()), edges, tuple(groups), workload.arrival.rate_per_s or 0.0, deadline,
        sla.utilisation_cap, sla.penalty_usd_h_per_s, costs, links, cluster.fabric.scale_out_latency_s,
        tuple(devices), {catalog.device(d).name: n for d, n in cluster.inventory.items()},
        tuple(catalog.device(d).name for d in cluster.buy), cluster.mode,
    )


def _plan_op(op: NodeOp, name: str | None = None) -> PlanOp:
    out_tokens = op.properties.get("output_tokens")
    kind = "llm.aggregated" if isinstance(op, LlmCallOp) else op.name.split(".", 1)[1]
    return PlanOp(
        name or op.node_id, kind, op.node_id.rsplit(".", 1)[0] if name is None else op.node_id,
        op.visit_count, prune([_candidate(c) for c in op.candidates]),
        output_tokens=out_tokens.mean_value if isinstance(out_tokens, DistAttr) else 0.0,
        model=str_prop(op, "model"), dtype=str_prop(op, "dtype"),
    )


def _with_variant(op: PlanOp, variant: str) -> PlanOp:
    return replace(op, variant=variant, node=op.name.rsplit(".", 1)[0] if variant == "disaggregated" else op.node)


def _candidate(c: CandidateAttr) -> OpCandidate:
    tp, pp = c.tp.data, c.pp.data
    return OpCandidate(c.device.data, tp, pp, c.batch.data, c.span_s.data, c.requests_per_s.data, tp * pp,
                       c.usd_h.data, c.feasible, c.infeasible.data,
                       f"{c.latency_s.data * 1e3:.2f} ms at batch {c.batch.data}, {c.bound.data}-bound")


def _contract(module: ModuleOp, placeable: set[str]) -> list[_Use]:
    """Edges between placeable ops, looking through routers (branch, loop), riders (MoE gate/merge),
    sub-agent boundaries and transfers; a loop's `repeat` result closes a cycle and is dropped."""
    succ: dict[str, list[tuple[str, float, bool]]] = {}

    def add(value: SSAValue, dst: str, size: float) -> None:
        if isinstance(value, OpResult) and isinstance(value.op, LoopOp) and value is value.op.repeat:
            return
        kv = isinstance(value.type, KvType)
        if isinstance(value, BlockArgument) and isinstance(value.block.parent_op(), SubagentOp):
            src = f"{value.block.parent_op().node_id}#in"  # entering a sub-agent, not leaving it
        else:
            src = source(value, through_transfers=True)
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
