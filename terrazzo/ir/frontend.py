"""Agent spec → `agent` module: one op per node, one SSA use per edge, sub-agents as nested regions.

Ops follow the graph's dependency order (AgentGraph.topo_order()); a loop's edge back to its body is the one
use of a value defined later, which the graph region allows. Entry nodes (no incoming edge apart from a
repeat) take the request (`agent.input`, or the sub-agent's block arguments); sinks feed `agent.output`.
An edge with no `data_bytes` carries what its source typically emits (see `payload_bytes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TypedDict

from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, ModuleOp, StringAttr, f64
from xdsl.ir import Attribute, Block, Region, SSAValue

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import CatalogError
from terrazzo.ir.attributes import DataType, DistAttr
from terrazzo.ir.dialects import agent_dialect as A
from terrazzo.ir.dialects.node_op import NodeOp, count_attr, f64_attr, i64_attr, name_hint
from terrazzo.spec.agent import Agent, AgentGraph, ComputeNode, Edge, LlmNode, LoopNode, Node, SubagentNode
from terrazzo.spec.distributions import Dist
from terrazzo.spec.prefix import PrefixSizes, mean_prefix_sizes, with_prefix
from terrazzo.spec.workload import Workload

TEXT_BYTES_PER_TOKEN = 4.0  # UTF-8 English averages about 4 characters per BPE token
AUDIO_BYTES_PER_S = 32_000.0  # 16 kHz 16-bit mono PCM, what Whisper consumes
SPEECH_BYTES_PER_TOKEN = 16_000.0  # ~1/3 s of 24 kHz 16-bit speech per spoken token
CHUNK_BYTES = 1024.0  # one retrieved passage


class _Common(TypedDict):
    """The NodeOp.make arguments every node kind shares."""

    node_id: str
    inputs: Sequence[SSAValue]
    visits: float
    edge_bytes: Sequence[float]
    join: str


def agent_to_module(agent: Agent, catalog: Catalog | None = None, workload: Workload | None = None) -> ModuleOp:
    """`workload` adds its sessions' conversation to LLM prefixes (spec/prefix.py); without one, each request
    stands alone."""
    block = Block()
    entry = A.InputOp(result_types=[DataType()])
    entry.out.name_hint = "input"
    block.add_op(entry)
    prefixes = mean_prefix_sizes(agent.graph, workload)
    sinks = _emit_graph(agent.graph, block, [entry.out], None, "", 1.0, catalog, prefixes)
    block.add_op(A.OutputOp(operands=[sinks]))
    graph = A.GraphOp(agent.name, Region(block), agent.description)
    return ModuleOp([graph])


class _Level(AgentGraph):
    """One level of a graph, sub-agents standing as plain nodes, that solves for its loops' shares once
    (visits() needs them and so does the frontend; each solve is a dense system per loop)."""

    @cached_property
    def shares(self) -> dict[str, float]:
        return AgentGraph.repeat_shares(self)

    def repeat_shares(self) -> dict[str, float]:
        return self.shares


def level_visits(graph: AgentGraph) -> tuple[dict[str, float], dict[str, float]]:
    """Expected visits of every node of this level (a sub-agent counts as one node) and each loop's share of
    arrivals that repeat."""
    flat = [
        ComputeNode(id=n.id, kind="compute", cpu_s=Dist.fixed(0.0), join=n.join) if isinstance(n, SubagentNode) else n
        for n in graph.nodes
    ]
    level = _Level.model_construct(nodes=flat, edges=graph.edges)
    return level.visits(), level.shares


def _emit_graph(
    graph: AgentGraph, block: Block, entry: Sequence[SSAValue], entry_bytes: Sequence[float] | None, prefix: str,
    scale: float, catalog: Catalog | None, prefixes: Mapping[str, PrefixSizes],
) -> list[SSAValue]:
    """Add one op per node of `graph` to `block`; returns the values of its sinks.

    `entry_bytes` sizes the entry edges (a sub-agent's operands); None means a request of the size the entry
    node consumes.
    """
    nodes = graph.by_id()
    level, shares = level_visits(graph)
    visits = {k: v * scale for k, v in level.items()}
    repeat = graph.repeat_edges()
    in_edges: dict[str, list[tuple[int, Edge]]] = {n.id: [] for n in graph.nodes}
    for j, e in enumerate(graph.edges):
        in_edges[e.dst].append((j, e))
    sizes = _edge_sizes(graph, catalog)
    ops: dict[str, NodeOp] = {}
    back: list[tuple[NodeOp, int, int]] = []  # repeat edges, wired once their loop exists: (op, operand, edge)
    for nid in graph.topo_order():
        node = nodes[nid]
        inputs: list[SSAValue] = []
        sizes_in: list[float] = []
        if all(j in repeat for j, _ in in_edges[nid]):
            inputs += entry
            sizes_in += entry_bytes if entry_bytes is not None else [_request_bytes(node)] * len(entry)
        later: list[tuple[int, int]] = []
        for j, e in in_edges[nid]:
            if j in repeat:
                later.append((len(inputs), j))
                inputs.append(entry[0])  # placeholder until the loop op exists
            else:
                inputs.append(_edge_value(graph, ops[e.src], j))
            sizes_in.append(sizes[j])
        op = _make_op(node, prefix, inputs, sizes_in, visits[nid], shares, graph, catalog, prefixes)
        back += [(op, i, j) for i, j in later]
        ops[nid] = op
        block.add_op(op)
    for op, index, j in back:
        operands = list(op.operands)
        operands[index] = _edge_value(graph, ops[graph.edges[j].src], j)
        op.operands = operands
    sinks: list[SSAValue] = []
    for n in graph.nodes:
        out = graph.successors(n.id)
        if not out:
            sinks.append(ops[n.id].results[0])
        elif isinstance(n, LoopNode) and all(e.dst == n.body for e in out):
            sinks.append(ops[n.id].results[1])  # arrivals past the bound end here
    return sinks


def _edge_value(graph: AgentGraph, src: NodeOp, j: int) -> SSAValue:
    """The result of `src` that edge j leaves by: a branch's arm, a loop's repeat or exit, else the only one."""
    edge = graph.edges[j]
    if isinstance(src, A.BranchOp):
        arms = [k for k, e in enumerate(graph.edges) if e.src == edge.src]
        return src.results[arms.index(j)]
    if isinstance(src, A.LoopOp):
        loop = graph.node(edge.src)
        body = loop.body if isinstance(loop, LoopNode) else None
        return src.results[0] if edge.dst == body else src.results[1]
    return src.results[0]


def _make_op(
    node: Node, prefix: str, inputs: list[SSAValue], sizes: list[float], visits: float, shares: dict[str, float],
    graph: AgentGraph, catalog: Catalog | None, prefixes: Mapping[str, PrefixSizes],
) -> NodeOp:
    nid = f"{prefix}{node.id}"
    common: _Common = {"node_id": nid, "inputs": inputs, "visits": visits, "edge_bytes": sizes, "join": node.join}
    d = DistAttr.of
    props: dict[str, Attribute]
    match node.kind:
        case "llm":
            props = {"model": StringAttr(node.model), "dtype": StringAttr(node.dtype),
                     "input_tokens": d(node.input_tokens), "output_tokens": d(node.output_tokens),
                     "serving": StringAttr(node.serving)}
            if node.prefix:
                props.update(_prefix_props(node, prefixes[nid]))
            return A.LlmCallOp.make(**common, props=props)
        case "tool":
            props = {"protocol": StringAttr(node.protocol), "latency_s": d(node.latency_s), "cpu_s": d(node.cpu_s),
                     "request_bytes": count_attr(node.request_bytes),
                     "response_bytes": count_attr(node.response_bytes)}
            if node.endpoint:
                props["endpoint"] = StringAttr(node.endpoint)
            if node.function:
                props["function"] = StringAttr(node.function)
            return A.ToolInvokeOp.make(**common, props=props)
        case "memory_load" | "memory_store":
            cls = A.MemoryLoadOp if node.kind == "memory_load" else A.MemoryStoreOp
            return cls.make(**common, props={"store": StringAttr(node.store), "data_bytes": d(node.data_bytes)})
        case "memory_lookup":
            props = {"index_vectors": i64_attr(node.index_vectors), "dimension": i64_attr(node.dimension),
                     "k": i64_attr(node.k), "index": StringAttr(node.index),
                     "embed_model": StringAttr(node.embed_model), "query_tokens": d(node.query_tokens)}
            return A.MemoryLookupOp.make(**common, props=props)
        case "embed":
            return A.EmbedOp.make(**common, props={"model": StringAttr(node.model), "tokens": d(node.tokens)})
        case "stt":
            props = {"model": StringAttr(node.model), "audio_s": d(node.audio_s),
                     "output_tokens": d(node.output_tokens)}
            return A.SttOp.make(**common, props=props)
        case "tts":
            props = {"input_tokens": d(node.input_tokens), "cpu_s_per_token": f64_attr(node.cpu_s_per_token)}
            if node.model:
                props["model"] = StringAttr(node.model)
            return A.TtsOp.make(**common, props=props)
        case "compute":
            props = {"cpu_s": d(node.cpu_s)}
            if node.function:
                props["function"] = StringAttr(node.function)
            return A.ComputeOp.make(**common, props=props)
        case "branch":
            out = graph.successors(node.id)
            props = {"probs": DenseArrayBase.from_list(f64, [e.probability or 0.0 for e in out])}
            if any(e.condition for e in out):
                props["conditions"] = ArrayAttr([StringAttr(e.condition or "") for e in out])
            op = A.BranchOp.make(**common, props=props, result_types=[[DataType()] * len(out)])
            for res, e in zip(op.results, out, strict=True):
                res.name_hint = name_hint(f"{nid}.{e.dst}")
            return op
        case "loop":
            props = {"bound": i64_attr(node.bound), "repeat_share": f64_attr(shares[node.id])}
            loop = A.LoopOp.make(**common, props=props, result_types=[DataType(), DataType()])
            loop.results[0].name_hint, loop.results[1].name_hint = name_hint(f"{nid}.repeat"), name_hint(f"{nid}.exit")
            return loop
        case "subagent":
            body = Block(arg_types=[DataType()] * len(inputs))
            for arg in body.args:
                arg.name_hint = name_hint(f"{nid}.in")
            inner = node.resolved
            sinks = _emit_graph(inner, body, list(body.args), sizes, f"{nid}/", visits, catalog, prefixes)
            body.add_op(A.OutputOp(operands=[sinks]))
            return A.SubagentOp.make(**common, regions=[Region(body)])
    raise ValueError(f"unknown node kind {node.kind}")


def _prefix_props(node: LlmNode, sizes: PrefixSizes) -> dict[str, Attribute]:
    """The call's prefix sources with their mean sizes; its input becomes the full input (prefix + new),
    what a cold prefill processes."""
    keys = [p.source if p.name is None else f"{p.source}:{p.name}" for p in node.prefix]
    tokens = [sizes.conversation if p.source == "conversation" else (p.tokens.expected if p.tokens else 0.0)
              for p in node.prefix]
    return {"prefix": ArrayAttr([StringAttr(k) for k in keys]),
            "prefix_tokens": DenseArrayBase.from_list(f64, tokens),
            "input_tokens": DistAttr.of(with_prefix(node.input_tokens, sizes.total))}


def _edge_sizes(graph: AgentGraph, catalog: Catalog | None) -> list[float]:
    nodes = graph.by_id()
    return [e.data_bytes if e.data_bytes > 0 else _payload(nodes[e.src], graph, catalog) for e in graph.edges]


def _payload(node: Node, graph: AgentGraph, catalog: Catalog | None, seen: frozenset[str] = frozenset()) -> float:
    """Bytes a node typically emits per visit when its edge does not say; routers forward what they receive."""
    match node.kind:
        case "llm" | "stt":
            return node.output_tokens.expected * TEXT_BYTES_PER_TOKEN
        case "tool":
            return node.response_bytes
        case "memory_load":
            return node.data_bytes.expected
        case "memory_lookup":
            return node.k * CHUNK_BYTES
        case "embed":
            return _embedding_bytes(node.model, catalog)
        case "tts":
            return node.input_tokens.expected * SPEECH_BYTES_PER_TOKEN
        case "branch" | "loop":
            if node.id in seen:
                return 0.0
            nodes = graph.by_id()
            sizes = [e.data_bytes or _payload(nodes[e.src], graph, catalog, seen | {node.id})
                     for e in graph.edges if e.dst == node.id]
            return max(sizes, default=0.0)
        case "subagent":
            inner = node.resolved
            return max((_payload(n, inner, catalog) for n in inner.nodes if not inner.successors(n.id)), default=0.0)
    return 0.0  # memory_store, compute: an acknowledgement or a small result


def _embedding_bytes(model: str, catalog: Catalog | None) -> float:
    if catalog is not None:
        try:
            return catalog.model(model).hidden * 4.0
        except CatalogError:
            pass
    return 384 * 4.0


def _request_bytes(node: Node) -> float:
    """What a request carries into an entry node: audio for speech input, else a prompt's text."""
    if node.kind == "stt":
        return node.audio_s.expected * AUDIO_BYTES_PER_S
    tokens = getattr(node, "input_tokens", None) or getattr(node, "query_tokens", None) or getattr(node, "tokens", None)
    return tokens.expected * TEXT_BYTES_PER_TOKEN if tokens is not None else CHUNK_BYTES
