"""How many tokens of an LLM call's input sit in front of its new tokens: the part KV reuse can skip.

The full input of LLM call k of a request is shared prefixes + conversation(k) + new_input(k), where the
shared prefixes are the node's `system_prompt`s and `context`s (each counted once, whoever names it) and
conversation(k) is the sum over the request's (and its session's) earlier LLM calls j < k of
new_input(j) + output(j). `prefix_tokens` sizes one call from its history (the simulator and the runtime,
with drawn token counts); `mean_prefix_sizes` gives the expected sizes per visit of every LLM node (the
IR and the planner, which work on means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from terrazzo.spec.agent import SHARED_SOURCES, AgentGraph, ComputeNode, LlmNode, LoopNode, SubagentNode
from terrazzo.spec.distributions import Dist
from terrazzo.spec.workload import Workload

_CallTokens = Callable[[str, LlmNode], float]  # (node path, node) -> expected new input + output tokens


class CallTokens(NamedTuple):
    """One earlier LLM call of the request or session: what was new in its input, and what it generated."""

    new_input: float
    output: float


@dataclass(frozen=True)
class PrefixSizes:
    """Tokens in front of a call's new input: `shared` (system prompts, contexts) then `conversation`."""

    shared: float
    conversation: float

    @property
    def total(self) -> float:
        return self.shared + self.conversation


def shared_tokens(node: LlmNode, drawn: Mapping[str, float] | None = None) -> float:
    """The node's system prompts and contexts: their mean sizes, or the request's draws by name."""
    sizes = drawn or {}
    return sum((sizes.get(p.name or "", _mean(p.tokens)) for p in node.prefix if p.source in SHARED_SOURCES), 0.0)


def has_conversation(node: LlmNode) -> bool:
    return any(p.source == "conversation" for p in node.prefix)


def prefix_tokens(node: LlmNode, history: Iterable[CallTokens | tuple[float, float]] = (),
                  drawn: Mapping[str, float] | None = None) -> PrefixSizes:
    """The prefix of one call of `node`, given the earlier LLM calls of its request and session (`history`,
    oldest first) and, optionally, the sizes the request drew for its shared prefixes (`drawn`, by name)."""
    conversation = sum(i + o for i, o in history) if has_conversation(node) else 0.0
    return PrefixSizes(shared_tokens(node, drawn), float(conversation))


def full_input_tokens(node: LlmNode, new_input: float, history: Iterable[CallTokens | tuple[float, float]] = (),
                      drawn: Mapping[str, float] | None = None) -> float:
    """What a cold prefill of this call processes: its prefix and its new input."""
    return prefix_tokens(node, history, drawn).total + new_input


def with_prefix(new_input: Dist, prefix: float) -> Dist:
    """The full input's distribution: the new input shifted by a prefix of mean size `prefix`.

    The mean is exact; the spread stays the new input's (lognormal and exponential keep their standard
    deviation, as a lognormal around the shifted mean)."""
    if prefix <= 0:
        return new_input
    d = new_input
    match d.dist:
        case "fixed":
            return Dist.fixed(d.expected + prefix)
        case "uniform":
            return Dist(dist="uniform", low=(d.low or 0.0) + prefix, high=(d.high or 0.0) + prefix)
        case "normal":
            return Dist(dist="normal", mean=d.expected + prefix, std=d.std)
        case "lognormal" | "exponential":
            std = d.expected * (d.cv if d.dist == "lognormal" and d.cv is not None else 1.0)
            return Dist(dist="lognormal", mean=d.expected + prefix, cv=std / (d.expected + prefix))
        case _:
            return Dist(dist="empirical", values=[v + prefix for v in d.values or []], weights=d.weights)


def mean_prefix_sizes(graph: AgentGraph, workload: Workload | None = None) -> dict[str, PrefixSizes]:
    """Expected prefix per visit of every LLM leaf (by node path, 'sub/child' inside sub-agents).

    Conversation per visit: the expected tokens of the LLM calls that run before it. Exact for sequences and
    fixed-count loops (iteration i of a loop sees i-1 earlier iterations of the loop's body); with branches
    inside a loop it is first order (expected iterations, not their spread). Sessions add, per call, the
    mean of (turn-1) × a whole request's tokens over the session's turns. The workload's `tokens:`
    overrides replace the node's own distributions, as everywhere else.
    """
    overrides = workload.tokens if workload is not None else {}

    def call_tokens(path: str, node: LlmNode) -> float:
        over = overrides.get(path)
        new_in = over.input_tokens if over is not None and over.input_tokens is not None else node.input_tokens
        out = over.output_tokens if over is not None and over.output_tokens is not None else node.output_tokens
        return new_in.expected + out.expected

    carry = 0.0
    if workload is not None and workload.sessions is not None:
        turns, pairs = workload.sessions.turn_moments()
        carry = pairs / turns * _conversation(graph, 0.0, "", call_tokens, {})
    means: dict[str, float] = {}
    _conversation(graph, carry, "", call_tokens, means)
    return {path: PrefixSizes(shared_tokens(node), means[path] if has_conversation(node) else 0.0)
            for path, node in graph.leaves() if isinstance(node, LlmNode)}


def _mean(tokens: Dist | None) -> float:
    return tokens.expected if tokens is not None else 0.0


def _conversation(graph: AgentGraph, before: float, path: str, call_tokens: _CallTokens,
                  out: dict[str, float]) -> float:
    """Fill `out` with the mean conversation per visit of this level's LLM nodes (and its sub-agents');
    return the conversation tokens one entry of this level adds."""
    flat = AgentGraph.model_construct(
        nodes=[ComputeNode(id=n.id, kind="compute", cpu_s=Dist.fixed(0.0), join=n.join)
               if isinstance(n, SubagentNode) else n for n in graph.nodes], edges=graph.edges)
    visits, shares = flat.visits(), flat.repeat_shares()
    added: dict[str, float] = {}  # conversation tokens one visit of a node adds
    for n in graph.nodes:
        if isinstance(n, LlmNode):
            added[n.id] = call_tokens(f"{path}{n.id}", n)
        elif isinstance(n, SubagentNode) and n.graph is not None:
            added[n.id] = _conversation(n.graph, 0.0, f"{path}{n.id}/", call_tokens, {})
    order = {nid: i for i, nid in enumerate(graph.topo_order())}
    loops = [n for n in graph.nodes if isinstance(n, LoopNode)]
    regions = {loop.id: (graph._reachable(loop.body, forward=True, stop=loop.id)
                         & graph._reachable(loop.id, forward=False)) | {loop.id, loop.body} for loop in loops}
    for nid in added:
        inner = min((loop for loop in loops if nid in regions[loop.id]), key=lambda lp: len(regions[lp.id]),
                    default=None)
        region = regions[inner.id] if inner is not None else set()
        conv = before + sum(visits[m] * a for m, a in added.items() if m not in region and order[m] < order[nid])
        if inner is not None:
            body = visits[inner.body]
            entries = body - visits[inner.id] * shares[inner.id]
            iterations = body / entries if entries > 1e-12 else 1.0
            for m, a in added.items():
                if m in region:
                    earlier = order[m] < order[nid] and m != nid
                    conv += visits[m] / body * a * ((iterations + 1) / 2 if earlier else (iterations - 1) / 2)
        node = graph.node(nid)
        if isinstance(node, SubagentNode) and node.graph is not None:
            _conversation(node.graph, conv, f"{path}{nid}/", call_tokens, out)
        else:
            out[f"{path}{nid}"] = conv
    return sum(visits[m] * a for m, a in added.items())
