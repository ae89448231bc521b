"""The planner's input: granular ops with priced candidates, the edges between them, and the inputs
that size pools (arrival rate, SLA, inventory). Built from an agent, workload, SLA and cluster.

Decomposition follows the IR's passes (terrazzo/ir): an LLM call becomes prefill → KV transfer →
decode, or stays one aggregated op — both variants are kept and the MILP picks one; a memory lookup
becomes embed → ANN search; control nodes (branch, loop) carry no work and are contracted away,
their effect kept in each op's expected visits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from terrazzo.catalog.load import Catalog
from terrazzo.catalog.schema import Device
from terrazzo.cost.candidates import Candidate, llm_candidates
from terrazzo.cost.cpu_ops import ann_search, encoder_forward
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.cost.network import scale_out_link
from terrazzo.cost.tco import HourlyCost, device_usd_per_hour
from terrazzo.spec.agent import (
    Agent,
    AgentGraph,
    ComputeNode,
    EmbedNode,
    LlmNode,
    MemoryLoadNode,
    MemoryLookupNode,
    MemoryStoreNode,
    Node,
    SttNode,
    SubagentNode,
    ToolNode,
    TtsNode,
)
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

REFERENCE_DEVICE = "h100-sxm"  # the paper's baseline, always priced so H100::H100 can be reported
EDGE_DEFAULT_BYTES = 4096.0
WHISPER_FRAMES_PER_S = 50  # 1,500 encoder positions per 30 s window: https://github.com/openai/whisper
EMBED_BATCHES = (1, 32)


@dataclass(frozen=True)
class OpCandidate:
    """One way to run an op: `latency_s` per visit on the request's path, `rate_per_s` visits one
    replica sustains, `devices` and `usd_h` per replica."""

    device: str
    tp: int
    pp: int
    batch: int
    latency_s: float
    rate_per_s: float
    devices: int
    usd_h: float
    feasible: bool = True
    reason: str = ""
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.device} tp{self.tp} pp{self.pp} b{self.batch}"


@dataclass(frozen=True)
class PlanOp:
    name: str
    kind: str
    node: str
    visits: float
    candidates: tuple[OpCandidate, ...]
    variant: str | None = None
    output_tokens: float = 0.0
    model: str | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class PlanEdge:
    src: str
    dst: str
    data_bytes: float
    kind: Literal["data", "kv"] = "data"


@dataclass(frozen=True)
class VariantGroup:
    """Mutually exclusive ways to serve one agent node: variant name → its ops."""

    node: str
    variants: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class PlanningGraph:
    ops: tuple[PlanOp, ...]
    edges: tuple[PlanEdge, ...]
    groups: tuple[VariantGroup, ...]
    rate_per_s: float
    deadline_s: float | None
    utilisation_cap: float
    penalty_usd_h_per_s: float
    device_costs: dict[str, HourlyCost]
    link_bytes_s: dict[str, float]
    link_latency_s: float
    cluster_devices: tuple[str, ...]
    inventory: dict[str, int] = field(default_factory=dict)
    buy: tuple[str, ...] = ()
    mode: str = "unconstrained"

    def op(self, name: str) -> PlanOp:
        return self._index()[name]

    def _index(self) -> dict[str, PlanOp]:
        return {o.name: o for o in self.ops}

    def transfer_s(self, edge: PlanEdge, src_device: str, dst_device: str) -> float:
        """Time an edge's data takes between the ends' devices; KV always moves (different pools)."""
        if edge.kind == "data" and src_device == dst_device:
            return 0.0
        bw = min(self.link_bytes_s[src_device], self.link_bytes_s[dst_device])
        return self.link_latency_s + edge.data_bytes / bw

    def sinks(self) -> list[str]:
        has_out = {e.src for e in self.edges}
        return [o.name for o in self.ops if o.name not in has_out]


def _from_candidate(c: Candidate, latency_s: float) -> OpCandidate:
    return OpCandidate(c.device, c.tp, c.pp, c.batch, latency_s, c.requests_per_s, c.devices, c.usd_h, c.feasible,
                       c.reason, f"{c.phase} {c.latency_s * 1e3:.2f} ms at batch {c.batch}, {c.bound}-bound")


def _llm_ops(node_path: str, node: LlmNode, visits: float, isl: float, osl: float, catalog: Catalog,
             devices: list[str], cluster: Cluster, sla: Sla) -> tuple[list[PlanOp], list[PlanEdge], VariantGroup]:
    limits = sla.limits_for(node_path)
    offline = sla.mode == "offline"
    cands = llm_candidates(
        catalog, node.model, node.dtype, isl, osl, devices, catalog.tco_profile(cluster.tco_profile),
        cluster.fabric, None if offline else limits.ttft_s, None if offline else limits.tbt_s, cluster.price_profile,
    )
    by_phase: dict[str, list[OpCandidate]] = {"prefill": [], "decode": [], "aggregated": []}
    for c in cands:
        if c.phase == "decode":
            by_phase["decode"].append(_from_candidate(c, osl * c.latency_s))
        elif c.phase == "aggregated":
            pre = next((p for p in cands if p.phase == "prefill" and p.device == c.device and p.tp == c.tp
                        and p.pp == c.pp and p.batch == 1), None)
            ttft = pre.latency_s if pre else 0.0
            by_phase["aggregated"].append(_from_candidate(c, ttft + osl * c.latency_s))
        else:
            by_phase["prefill"].append(_from_candidate(c, c.latency_s))
    names = {p: f"{node_path}.{p}" for p in by_phase}
    kv = isl * kv_bytes_per_token(catalog.model(node.model), node.dtype)
    ops = [
        PlanOp(names[p], f"llm.{p}", node_path, visits, tuple(by_phase[p]),
               "aggregated" if p == "aggregated" else "disaggregated",
               osl if p != "prefill" else 0.0, node.model, node.dtype)
        for p in by_phase
    ]
    wanted = {"auto": ("aggregated", "disaggregated"), "aggregated": ("aggregated",),
              "disaggregated": ("disaggregated",)}[node.serving]
    ops = [o for o in ops if o.variant in wanted]
    variants = {v: tuple(o.name for o in ops if o.variant == v) for v in wanted}
    edges = [PlanEdge(names["prefill"], names["decode"], kv, "kv")] if "disaggregated" in wanted else []
    return ops, edges, VariantGroup(node_path, variants)


def _cpu_rate(device: Device, core_s: float) -> float:
    cores = device.cores.value if device.cores else 1.0
    return cores / core_s if core_s > 0 else math.inf


def _simple_ops(node_path: str, node: Node, visits: float, catalog: Catalog, devices: list[str],
                costs: dict[str, HourlyCost]) -> list[PlanOp]:
    """Non-LLM nodes: one op (two for a memory lookup), candidates on CPUs, and on accelerators for
    the tensor ops (embedding, ANN search, speech recognition)."""
    cpus = [d for d in devices if catalog.device(d).kind == "cpu"]
    out: list[PlanOp] = []

    def cand(device: str, latency_s: float, rate: float, batch: int = 1, detail: str = "") -> OpCandidate:
        return OpCandidate(device, 1, 1, batch, latency_s, rate, 1, costs[device].usd_h, detail=detail)

    def tensor_cands(run: callable) -> tuple[OpCandidate, ...]:  # type: ignore[valid-type]
        found = []
        for d in devices:
            dev = catalog.device(d)
            eff = catalog.efficiency_for(d, "default")
            for b in EMBED_BATCHES if dev.kind != "cpu" else (1,):
                est = run(dev, eff, b)
                rate = (b if dev.kind != "cpu" else (dev.cores.value if dev.cores else 1)) / est.latency_s
                found.append(cand(d, est.latency_s, rate, b, f"{est.latency_s * 1e3:.2f} ms, {est.bound}-bound"))
        return tuple(found)

    if isinstance(node, ToolNode | ComputeNode):
        core_s = node.cpu_s.expected
        wait = node.latency_s.expected if isinstance(node, ToolNode) else 0.0
        kind = "tool.invoke" if isinstance(node, ToolNode) else "compute"
        out.append(PlanOp(node_path, kind, node_path, visits, tuple(
            cand(d, wait + core_s, _cpu_rate(catalog.device(d), core_s)) for d in cpus)))
    elif isinstance(node, TtsNode):
        core_s = node.cpu_s_per_token * node.input_tokens.expected
        out.append(PlanOp(node_path, "tts", node_path, visits, tuple(
            cand(d, core_s, _cpu_rate(catalog.device(d), core_s)) for d in cpus)))
    elif isinstance(node, MemoryLoadNode | MemoryStoreNode):
        n_bytes = node.data_bytes.expected
        out.append(PlanOp(node_path, node.kind.replace("_", "."), node_path, visits, tuple(
            cand(d, 1e-4 + n_bytes / (catalog.device(d).memory_bw_gbyte_s.value * 1e9),
                 _cpu_rate(catalog.device(d), 1e-4)) for d in cpus)))
    elif isinstance(node, EmbedNode | MemoryLookupNode):
        model = catalog.model(node.model if isinstance(node, EmbedNode) else node.embed_model)
        tokens = (node.tokens if isinstance(node, EmbedNode) else node.query_tokens).expected
        embed_name = node_path if isinstance(node, EmbedNode) else f"{node_path}.embed"
        out.append(PlanOp(embed_name, "embed.encode", node_path, visits, tensor_cands(
            lambda dev, eff, b: encoder_forward(model, dev, eff, tokens * b))))
        if isinstance(node, MemoryLookupNode):
            out.append(PlanOp(f"{node_path}.search", "ann.search", node_path, visits, tensor_cands(
                lambda dev, eff, b: ann_search(dev, eff, node.index_vectors, node.dimension, node.k, node.index, b))))
    elif isinstance(node, SttNode):
        model = catalog.model(node.model)
        frames = WHISPER_FRAMES_PER_S * node.audio_s.expected
        steps = node.output_tokens.expected
        enc_share = model.encoder_layers / max(1, model.encoder_layers + model.layers)

        def whisper(dev: Device, eff: object, b: int) -> object:
            half = model.model_copy(update={"params_b": model.params_b.model_copy(
                update={"value": model.params_b.value * enc_share})})
            dec = model.model_copy(update={"params_b": model.params_b.model_copy(
                update={"value": model.params_b.value * (1 - enc_share)})})
            enc = encoder_forward(half, dev, eff, frames * b)  # type: ignore[arg-type]
            step = encoder_forward(dec, dev, eff, b)  # type: ignore[arg-type]
            return enc + step.scaled(steps)

        out.append(PlanOp(node_path, "stt", node_path, visits, tensor_cands(whisper)))
    return out


def build(agent: Agent, workload: Workload, sla: Sla, cluster: Cluster, catalog: Catalog) -> PlanningGraph:
    """Decompose the agent into granular ops and price every candidate for the cluster's devices."""
    devices = [catalog.device(d).name for d in cluster.device_types]
    priced = list(dict.fromkeys([*devices, REFERENCE_DEVICE]))
    costs = {d: device_usd_per_hour(catalog, d, cluster.tco_profile, cluster.price_profile) for d in priced}
    visits = agent.graph.visits()
    ops: list[PlanOp] = []
    edges: list[PlanEdge] = []
    groups: list[VariantGroup] = []
    entry: dict[str, list[str]] = {}  # node path → ops that receive its inputs
    exit_: dict[str, list[str]] = {}  # node path → ops that produce its outputs
    for path, node in agent.graph.leaves():
        v = visits.get(path, 0.0)
        if isinstance(node, LlmNode):
            override = workload.tokens.get(path)
            isl = (override.input_tokens if override and override.input_tokens else node.input_tokens).expected
            osl = (override.output_tokens if override and override.output_tokens else node.output_tokens).expected
            new_ops, new_edges, group = _llm_ops(path, node, v, isl, osl, catalog, priced, cluster, sla)
            groups.append(group)
            entry[path] = [o.name for o in new_ops if o.kind in ("llm.prefill", "llm.aggregated")]
            exit_[path] = [o.name for o in new_ops if o.kind in ("llm.decode", "llm.aggregated")]
        else:
            new_ops, new_edges = _simple_ops(path, node, v, catalog, devices, costs), []
            if len(new_ops) == 2:
                new_edges = [PlanEdge(new_ops[0].name, new_ops[1].name, 4.0 * getattr(node, "dimension", 0))]
            if new_ops:
                entry[path], exit_[path] = [new_ops[0].name], [new_ops[-1].name]
        ops.extend(new_ops)
        edges.extend(new_edges)
    edges.extend(_contract(agent, entry, exit_))
    rate = workload.arrival.rate_per_s or 0.0
    links = {d: scale_out_link(catalog.device(d), cluster.fabric).bw_bytes_s for d in priced}
    deadline = sla.end_to_end.latency_s if sla.end_to_end and sla.mode == "interactive" else None
    return PlanningGraph(
        tuple(ops), tuple(dict.fromkeys(edges)), tuple(groups), rate, deadline, sla.utilisation_cap,
        sla.penalty_usd_h_per_s, costs, links, cluster.fabric.scale_out_latency_s, tuple(devices),
        {catalog.device(d).name: n for d, n in cluster.inventory.items()},
        tuple(catalog.device(d).name for d in cluster.buy), cluster.mode,
    )


def _contract(agent: Agent, entry: dict[str, list[str]], exit_: dict[str, list[str]]) -> list[PlanEdge]:
    """Agent edges between work-carrying nodes, with control nodes and sub-agent boundaries passed
    through; repeat edges of loops are dropped (their effect is in the visits)."""
    succ: dict[str, list[tuple[str, float]]] = {}

    def walk(graph: AgentGraph, prefix: str) -> None:
        repeat = graph.repeat_edges()
        for j, e in enumerate(graph.edges):
            if j not in repeat:
                succ.setdefault(f"{prefix}{e.src}", []).append((f"{prefix}{e.dst}", e.data_bytes or EDGE_DEFAULT_BYTES))
        for n in graph.nodes:
            if isinstance(n, SubagentNode) and n.graph is not None:
                inner, outer = f"{prefix}{n.id}/", f"{prefix}{n.id}"
                walk(n.graph, inner)
                after = succ.pop(outer, [])  # the sub-agent's sinks feed what followed it
                has_in = {e.dst for e in n.graph.edges}
                has_out = {e.src for e in n.graph.edges}
                succ[outer] = [(f"{inner}{m.id}", EDGE_DEFAULT_BYTES) for m in n.graph.nodes if m.id not in has_in]
                for m in n.graph.nodes:
                    if m.id not in has_out:
                        succ.setdefault(f"{inner}{m.id}", []).extend(after)

    walk(agent.graph, "")
    out: list[PlanEdge] = []
    for src in exit_:
        seen: set[str] = set()
        stack = [(d, s) for d, s in succ.get(src, [])]
        while stack:
            node, size = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in entry:
                out.extend(PlanEdge(a, b, size) for a in exit_[src] for b in entry[node])
            else:
                stack.extend(succ.get(node, []))
    return out
