"""The agent graph: typed nodes (paper §2.4, Table 1), edges carrying data, and expected visits.

A graph may be cyclic, but every cycle must be closed by a `loop` node's edge to its body, and the
loop's `bound` caps the repeats; that makes expected visits per request finite and the plan defined.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from terrazzo.limits import MAX_INDEX_VECTORS, MAX_K
from terrazzo.spec.distributions import Bytes, BytesDist, Dist, SecondsDist, TokensDist

NodeId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf or .nan anywhere


class NodeBase(Strict):
    id: NodeId
    description: str | None = None
    join: Literal["any", "all"] = Field(
        default="any", description="'any': runs once per arriving input; 'all': waits for every input (parallel join)"
    )


PrefixName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
SHARED_SOURCES = ("system_prompt", "context")


class PrefixSource(Strict):
    """A part of an LLM call's input that an earlier call may already have in KV (spec/prefix.py sizes it).

    `system_prompt` and `context` are shared by every node (and sub-agent) naming the same `name`;
    `conversation` is the request's (and session's) earlier LLM calls, their new input and output.
    """

    source: Literal["system_prompt", "conversation", "context"]
    name: PrefixName | None = Field(default=None, description="nodes naming the same name share its KV")
    tokens: TokensDist | None = None

    @model_validator(mode="after")
    def _fields(self) -> PrefixSource:
        if self.source == "conversation":
            if self.name is not None or self.tokens is not None:
                raise ValueError("a conversation prefix takes neither 'name' nor 'tokens' (its size is the earlier "
                                 "LLM calls' input and output); write just {source: conversation}")
        else:
            missing = [k for k in ("name", "tokens") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a {self.source} prefix needs 'name' (shared by every node naming it) and "
                                 f"'tokens' (its size); missing {', '.join(missing)}")
        return self


class LlmNode(NodeBase):
    """One LLM call; the IR splits it into prefill, KV transfer and decode.

    `input_tokens` is what is new in this call; `prefix` lists what sits in front of it (default: nothing,
    every call a cold prefill of `input_tokens`).
    """

    kind: Literal["llm"]
    model: str
    dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8"] = "bf16"
    input_tokens: TokensDist
    output_tokens: TokensDist
    serving: Literal["auto", "aggregated", "disaggregated"] = "auto"
    prefix: list[PrefixSource] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _prefix_order(self) -> LlmNode:
        kinds = [p.source for p in self.prefix]
        if kinds.count("conversation") > 1:
            raise ValueError("prefix names 'conversation' twice; list it once")
        if "conversation" in kinds and kinds[-1] != "conversation":
            raise ValueError("prefix: 'conversation' must come last (system prompts and contexts sit in front of it)")
        names = [p.name for p in self.prefix if p.name is not None]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"prefix names '{dup}' twice; list each shared prefix once")
        return self


class ToolNode(NodeBase):
    """An external call: `latency_s` is wall time waiting on it, `cpu_s` the host CPU it burns."""

    kind: Literal["tool"]
    protocol: Literal["http", "python"]
    endpoint: str | None = Field(default=None, description="URL for http tools")
    function: str | None = Field(default=None, description="'module:callable' for python tools")
    latency_s: SecondsDist = Dist.fixed(0.0)
    cpu_s: SecondsDist = Dist.fixed(0.001)
    request_bytes: Bytes = 1024
    response_bytes: Bytes = 4096

    @model_validator(mode="after")
    def _target(self) -> ToolNode:
        if self.protocol == "http" and not self.endpoint:
            raise ValueError("an http tool needs 'endpoint' (a URL)")
        if self.protocol == "python" and not self.function:
            raise ValueError("a python tool needs 'function' ('package.module:callable')")
        return self


class MemoryLoadNode(NodeBase):
    kind: Literal["memory_load"]
    store: str = "default"
    data_bytes: BytesDist = Dist.fixed(4096)


class MemoryStoreNode(NodeBase):
    kind: Literal["memory_store"]
    store: str = "default"
    data_bytes: BytesDist = Dist.fixed(4096)


class MemoryLookupNode(NodeBase):
    """Vector search: embed the query, then approximate nearest neighbours over the index."""

    kind: Literal["memory_lookup"]
    index_vectors: int = Field(gt=0, le=MAX_INDEX_VECTORS)
    dimension: int = Field(gt=0, le=65536)
    k: int = Field(default=5, gt=0, le=MAX_K)
    index: Literal["flat", "ivf", "hnsw"] = "ivf"
    embed_model: str = "all-minilm-l6-v2"
    query_tokens: TokensDist = Dist.fixed(32)

    @model_validator(mode="after")
    def _k_fits(self) -> MemoryLookupNode:
        if self.k > self.index_vectors:
            raise ValueError(f"k={self.k} is larger than the index ({self.index_vectors} vectors)")
        return self


class EmbedNode(NodeBase):
    kind: Literal["embed"]
    model: str = "all-minilm-l6-v2"
    tokens: TokensDist


class SttNode(NodeBase):
    kind: Literal["stt"]
    model: str = "whisper-large-v3"
    audio_s: SecondsDist
    output_tokens: TokensDist = Dist.fixed(64)


class TtsNode(NodeBase):
    """Text to speech; costed as CPU time per output second of audio unless a model is given."""

    kind: Literal["tts"]
    model: str | None = None
    input_tokens: TokensDist
    cpu_s_per_token: float = Field(default=0.002, ge=0)


class ComputeNode(NodeBase):
    kind: Literal["compute"]
    function: str | None = None
    cpu_s: SecondsDist


class BranchNode(NodeBase):
    """Exclusive choice: exactly one out-edge is taken, with the `probability` each edge states."""

    kind: Literal["branch"]


class LoopNode(NodeBase):
    """Bounded repetition: each arrival sends the flow back along the edge to `body`, at most `bound`
    times per entry; arrivals beyond the bound leave by the loop's other out-edges (or end there)."""

    kind: Literal["loop"]
    body: NodeId
    bound: int = Field(ge=1, le=10_000)


class SubagentNode(NodeBase):
    """A node that is itself an agent: inline `graph`, or `agent` naming a YAML file (resolved on load)."""

    kind: Literal["subagent"]
    agent: str | None = Field(default=None, pattern=r"^[^\x00]+$")
    graph: AgentGraph | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SubagentNode:
        if (self.agent is None) == (self.graph is None):
            raise ValueError("a subagent needs exactly one of 'agent' (a YAML path) or 'graph' (inline nodes/edges)")
        return self

    @property
    def resolved(self) -> AgentGraph:
        """The sub-agent's graph: inline, or read from `agent` by the spec loader (which every loaded spec is)."""
        if self.graph is None:
            raise ValueError(f"sub-agent '{self.id}': '{self.agent}' is not loaded yet; load the spec with load_agent")
        return self.graph


Node = Annotated[
    LlmNode | ToolNode | MemoryLoadNode | MemoryStoreNode | MemoryLookupNode | EmbedNode | SttNode
    | TtsNode | ComputeNode | BranchNode | LoopNode | SubagentNode,
    Field(discriminator="kind"),
]
NODE_KINDS = (
    "llm", "tool", "memory_load", "memory_store", "memory_lookup", "embed", "stt", "tts", "compute",
    "branch", "loop", "subagent",
)


class Edge(Strict):
    """A data or control dependency; `probability` only on edges leaving a branch node."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    src: NodeId = Field(alias="from")
    dst: NodeId = Field(alias="to")
    data_bytes: Bytes = 0.0
    probability: float | None = Field(default=None, ge=0, le=1)
    condition: str | None = None


class GraphError(ValueError):
    """Structural problem; `loc` says where in the spec (e.g. ('edges', 3, 'to'))."""

    def __init__(self, message: str, loc: tuple[str | int, ...], fix: str) -> None:
        super().__init__(message)
        self.loc, self.fix = loc, fix


class AgentGraph(Strict):
    nodes: list[Node] = Field(min_length=1)
    edges: list[Edge] = []

    def node(self, node_id: str) -> Node:
        return self.by_id()[node_id]

    def by_id(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    def successors(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node_id]

    def check(self) -> None:
        """Structural checks that need the whole graph; raises GraphError with the offending place."""
        ids: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.id in ids:
                raise GraphError(f"node id '{n.id}' is used twice", ("nodes", i, "id"), "give each node a unique id")
            ids[n.id] = i
        for j, e in enumerate(self.edges):
            for end, key in ((e.src, "from"), (e.dst, "to")):
                if end not in ids:
                    raise GraphError(f"edge {key} '{end}' names no node", ("edges", j, key),
                                     f"use one of: {', '.join(sorted(ids))}")
            src = self.nodes[ids[e.src]]
            if e.probability is not None and src.kind != "branch":
                raise GraphError(f"edge {e.src}->{e.dst} has a probability but '{e.src}' is a {src.kind} node",
                                 ("edges", j, "probability"), "put probabilities only on edges leaving a branch node")
        for i, n in enumerate(self.nodes):
            out = self.successors(n.id)
            if n.kind == "branch":
                if len(out) < 2:
                    raise GraphError(f"branch '{n.id}' has {len(out)} out-edge(s)", ("nodes", i),
                                     "give a branch at least two out-edges, each with a probability")
                if any(e.probability is None for e in out):
                    raise GraphError(f"an edge leaving branch '{n.id}' has no probability", ("nodes", i),
                                     "set 'probability' on every edge leaving the branch")
                total = sum(e.probability or 0.0 for e in out)
                if abs(total - 1.0) > 1e-6:
                    raise GraphError(f"probabilities leaving branch '{n.id}' sum to {total:g}", ("nodes", i),
                                     "make them sum to 1")
            if n.kind == "loop":
                if n.body not in ids:
                    raise GraphError(f"loop '{n.id}' body '{n.body}' names no node", ("nodes", i, "body"),
                                     f"use one of: {', '.join(sorted(ids))}")
                if not any(e.dst == n.body for e in out):
                    raise GraphError(f"loop '{n.id}' has no edge to its body '{n.body}'", ("nodes", i, "body"),
                                     f"add an edge from: {n.id} to: {n.body}")
            if isinstance(n, SubagentNode) and n.graph is not None:
                try:
                    n.graph.check()
                except GraphError as exc:
                    raise GraphError(str(exc), ("nodes", i, "graph", *exc.loc), exc.fix) from None
        self._check_shared_prefixes()
        self.topo_order()

    def _check_shared_prefixes(self) -> None:
        """Nodes naming one shared prefix name one text: the same source kind, model and size."""
        seen: dict[str, tuple[str, PrefixSource, LlmNode]] = {}
        for path, node in self.leaves():
            if not isinstance(node, LlmNode):
                continue
            for k, p in enumerate(node.prefix):
                if p.name is None:
                    continue
                if p.name not in seen:
                    seen[p.name] = (path, p, node)
                    continue
                first_path, first, first_node = seen[p.name]
                clash = ("source" if first.source != p.source else "tokens" if first.tokens != p.tokens
                         else "model" if first_node.model != node.model else None)
                if clash is not None:
                    i = next(i for i, n in enumerate(self.nodes) if path == n.id or path.startswith(f"{n.id}/"))
                    loc: tuple[str | int, ...] = ("nodes", i, "prefix", k) if path == self.nodes[i].id else ("nodes", i)
                    raise GraphError(
                        f"shared prefix '{p.name}' differs in {clash} between '{first_path}' and '{path}'", loc,
                        "give the same name only to one text (same source, tokens and model), or rename one")

    def repeat_edges(self) -> set[int]:
        """Edges from a loop node to its body: the only edges allowed to close a cycle."""
        loops = {n.id: n.body for n in self.nodes if isinstance(n, LoopNode)}
        return {j for j, e in enumerate(self.edges) if loops.get(e.src) == e.dst}

    def topo_order(self) -> list[str]:
        """Nodes in dependency order with repeat edges removed; any remaining cycle is unbounded."""
        skip = self.repeat_edges()
        indeg = {n.id: 0 for n in self.nodes}
        out: dict[str, list[str]] = {}  # each node's successors in edge order: linear in the graph's size
        for j, e in enumerate(self.edges):
            if j not in skip:
                indeg[e.dst] += 1
                out.setdefault(e.src, []).append(e.dst)
        ready = deque(n.id for n in self.nodes if indeg[n.id] == 0)
        order: list[str] = []
        while ready:
            nid = ready.popleft()
            order.append(nid)
            for dst in out.get(nid, ()):
                indeg[dst] -= 1
                if indeg[dst] == 0:
                    ready.append(dst)
        if len(order) < len(self.nodes):
            stuck = [n.id for n in self.nodes if n.id not in order]
            j = next(j for j, e in enumerate(self.edges) if j not in skip and e.src in stuck and e.dst in stuck)
            raise GraphError(
                f"cycle through {', '.join(stuck)} has no bound", ("edges", j),
                "close the cycle through a 'loop' node (its edge to 'body' repeats, at most 'bound' times)",
            )
        return order

    def _flow_matrix(self, repeat_share: dict[str, float], sinks: frozenset[str] = frozenset()) -> np.ndarray:
        """M[dst, src]: visits of dst per visit of src; loops send `repeat_share` back to their body."""
        index = {n.id: i for i, n in enumerate(self.nodes)}
        nodes = self.by_id()
        m = np.zeros((len(self.nodes), len(self.nodes)))
        repeat = self.repeat_edges()
        fan_in = dict.fromkeys(index, 0)
        for j, e in enumerate(self.edges):
            if j not in repeat:
                fan_in[e.dst] += 1
        for j, e in enumerate(self.edges):
            src = nodes[e.src]
            if e.src in sinks:
                continue
            if isinstance(src, LoopNode):
                share = repeat_share[e.src]
                weight = share if e.dst == src.body else 1.0 - share
            else:
                weight = (e.probability or 0.0) if src.kind == "branch" else 1.0
            if nodes[e.dst].join == "all" and j not in repeat:
                weight /= fan_in[e.dst]
            m[index[e.dst], index[e.src]] += weight or 0.0
        return m

    def _return_ratio(self, loop: LoopNode, shares: dict[str, float], busy: frozenset[str]) -> float:
        """Visits of `loop` caused by one pass down its body edge: the expected returns per pass
        (above 1 when the body fans out and several paths come back). Solved on the loop's region
        only — nodes reachable from the body that can reach the loop — since flow leaving it never
        returns."""
        region = self._reachable(loop.body, forward=True, stop=loop.id) & self._reachable(loop.id, forward=False)
        region |= {loop.id, loop.body}
        index = {n.id: i for i, n in enumerate(self.nodes)}
        keep = [index[n.id] for n in self.nodes if n.id in region]
        inner = {k: v for k, v in shares.items() if k not in busy}
        m = self._flow_matrix({**inner, **dict.fromkeys(busy, 0.0)}, sinks=busy)[np.ix_(keep, keep)]
        local = {i: k for k, i in enumerate(keep)}
        m[local[index[loop.body]], :] = 0.0  # flow back into the body (through an outer loop) ends this pass
        b = np.zeros(len(keep))
        b[local[index[loop.body]]] = 1.0
        v = np.linalg.solve(np.eye(len(keep)) - m, b)
        return float(max(v[local[index[loop.id]]], 0.0))

    def _reachable(self, start: str, forward: bool, stop: str | None = None) -> set[str]:
        step: dict[str, list[str]] = {}
        for e in self.edges:
            a, b = (e.src, e.dst) if forward else (e.dst, e.src)
            step.setdefault(a, []).append(b)
        seen, todo = {start}, [start]
        while todo:
            for nxt in step.get(todo.pop(), []):
                if nxt not in seen and nxt != stop:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def repeat_shares(self) -> dict[str, float]:
        """Per loop, the fraction of its arrivals that repeat: S/(1+qS), S = 1+q+…+q^(bound-1).

        With return ratio q, an entry repeats the body up to `bound` times, so expected repeats per
        first arrival are q^0+…+q^(bound-1) while arrivals are q^0+…+q^bound; both are linear in the
        arrivals, which keeps expected visits a linear system even with the cap.
        """
        loops = [n for n in self.nodes if isinstance(n, LoopNode)]
        shares = {n.id: 0.0 for n in loops}
        for _ in range(2):  # nested loops: the second pass sees the inner loops' shares from the first
            for loop in loops:
                q = self._return_ratio(loop, shares, frozenset({loop.id}))
                s = float(loop.bound) if abs(q - 1) < 1e-12 else (1 - q**loop.bound) / (1 - q)
                shares[loop.id] = s / (1 + q * s)
        return shares

    def visits(self, prefix: str = "", scale: float = 1.0) -> dict[str, float]:
        """Expected executions per request of every leaf node (sub-agents flattened as 'sub/child').

        Entry nodes run once; a branch passes each visit to one out-edge with its probability; other
        nodes pass it to every out-edge; a node runs once per arriving input (`join: any`) or once per
        set of inputs (`join: all`); loops repeat their body as `repeat_shares` says.
        """
        order = self.topo_order()
        repeat = self.repeat_edges()
        has_in = {e.dst for j, e in enumerate(self.edges) if j not in repeat}
        m = self._flow_matrix(self.repeat_shares())
        b = np.array([0.0 if n.id in has_in else 1.0 for n in self.nodes])
        v = np.linalg.solve(np.eye(len(self.nodes)) - m, b)
        expected = {n.id: max(float(x), 0.0) for n, x in zip(self.nodes, v, strict=True)}
        nodes = self.by_id()
        out: dict[str, float] = {}
        for nid in order:
            node = nodes[nid]
            if isinstance(node, SubagentNode) and node.graph is not None:
                out.update(node.graph.visits(f"{prefix}{nid}/", expected[nid] * scale))
            else:
                out[f"{prefix}{nid}"] = expected[nid] * scale
        return out

    def leaves(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """Every non-subagent node with its path, depth first."""
        for n in self.nodes:
            if isinstance(n, SubagentNode) and n.graph is not None:
                yield from n.graph.leaves(f"{prefix}{n.id}/")
            else:
                yield f"{prefix}{n.id}", n


class Agent(Strict):
    """A named agent: the top-level document of an agent YAML file."""

    name: NodeId
    description: str | None = None
    graph: AgentGraph

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: object) -> object:
        """Allow `nodes:`/`edges:` at the top level of the file, next to `name:`."""
        if isinstance(data, dict) and "graph" not in data and "nodes" in data:
            data = dict(data)
            data["graph"] = {k: data.pop(k) for k in ("nodes", "edges") if k in data}
        return data


SubagentNode.model_rebuild()
