"""Where an agent's calls can reuse a prefix, read off its specs: one `KvSite` per first-token op.

An LLM node's `prefix` names what comes before its new tokens (KV_COMMON item 1): shared system prompts
and contexts (counted once, reused by every call), and the conversation (every earlier call's new input
and output of the request, and of the session's earlier turns when the workload has sessions). Means
over the calls of a request (a loop runs the node `visits` times) and over a session's turns give the
reused tokens per hit, the share of calls that hit, and how long a prefix waits for its next call: the
answer's decode (at the TBT limit) and the loop's tool calls back to the node, or the user's think time
between turns.
"""

from __future__ import annotations

from typing import Any

from terrazzo.plan.kv_candidates import KvSite
from terrazzo.plan.planning_graph import PlanningGraph
from terrazzo.spec.agent import Agent, AgentGraph, LlmNode, LoopNode, SubagentNode, ToolNode
from terrazzo.spec.prefix import has_conversation, mean_prefix_sizes
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

FIRST_TOKEN_KINDS = ("llm.prefill", "llm.aggregated")
DEFAULT_TBT_S = 0.02  # decode pace for the hold time when the SLA sets no TBT limit


def kv_sites(agent: Agent, workload: Workload, sla: Sla, graph: PlanningGraph) -> dict[str, KvSite]:
    """op name → its site, for every first-token op of an LLM node that names a prefix."""
    nodes = {path: (n, g) for g, prefix in _graphs(agent.graph, "") for path, n in
             ((f"{prefix}{n.id}", n) for n in g.nodes)}
    sizes = mean_prefix_sizes(agent.graph, workload)  # spec/prefix.py: mean shared + conversation per visit
    turns, think_s = _sessions(workload)
    out = {}
    for o in graph.ops:
        found = nodes.get(o.node)
        if o.kind not in FIRST_TOKEN_KINDS or found is None:
            continue
        node, g = found
        if not isinstance(node, LlmNode):
            continue
        size = sizes.get(o.node)
        if not node.prefix or size is None or size.total <= 0:
            continue
        new, answer = _mean(node.input_tokens), _mean(node.output_tokens)
        talk = has_conversation(node)
        v = max(o.visits, 1.0)
        # a call hits when something sits in front of it: always behind a shared prompt, else all but a
        # session's very first call
        hits = 1.0 if size.shared > 0 else 1 - 1 / (v * turns)
        if hits <= 0:  # one call per session, yet a conversation in front: earlier LLM calls made it, so it hits
            hits = 1.0
        tbt = sla.limits_for(o.node).tbt_s or DEFAULT_TBT_S
        decode_s = answer * tbt
        loop_gaps, turn_gaps = v - 1, (turns - 1) / turns  # per request
        gaps = loop_gaps + turn_gaps
        hold = ((loop_gaps * (decode_s + _loop_tool_s(g, node.id)) + turn_gaps * (decode_s + think_s)) / gaps
                if talk and gaps > 0 else 0.0)
        edge = ", ".join(filter(None, [
            "loop iteration → next" if talk and loop_gaps > 0 else "",
            "turn → next turn" if talk and turns > 1 else "",
            *(f"shared {p.source.replace('_', ' ')} '{p.name}'" for p in node.prefix if p.source != "conversation")
        ])) or "conversation"
        out[o.name] = KvSite(o.name, o.node, size.total / hits, new, hold, hits, edge, sla.limits_for(o.node).tbt_s)
    return out


def _graphs(g: AgentGraph, prefix: str) -> list[tuple[AgentGraph, str]]:
    out = [(g, prefix)]
    for n in g.nodes:
        if isinstance(n, SubagentNode) and n.graph is not None:
            out += _graphs(n.graph, f"{prefix}{n.id}/")
    return out


def _mean(d: Any) -> float:
    if d is None:
        return 0.0
    for attr in ("expected", "mean_value"):
        if hasattr(d, attr):
            return float(getattr(d, attr))
    return float(d)


def _sessions(workload: Workload) -> tuple[float, float]:
    """(mean turns per session, mean think time s); (1, 0) without sessions."""
    s = workload.sessions
    if s is None:
        return 1.0, 0.0
    return max(s.turn_moments()[0], 1.0), s.think_time_s.expected


def _loop_tool_s(g: AgentGraph, node: str) -> float:
    """Mean tool time on the way from `node` back to itself through the loop whose body it is: paths
    to the loop node weighted by their branch probabilities (0 when the node is in no loop)."""
    loops = [n.id for n in g.nodes if isinstance(n, LoopNode) and n.body == node]
    if not loops:
        return 0.0
    by_id = g.by_id()
    succ: dict[str, list[tuple[str, float]]] = {}
    for e in g.edges:
        succ.setdefault(e.src, []).append((e.dst, e.probability if e.probability is not None else -1.0))
    total_p = total_t = 0.0
    stack = [(node, 1.0, 0.0, frozenset([node]))]
    while stack:
        at, p, t, seen = stack.pop()
        nxt = succ.get(at, [])
        free = [d for d, q in nxt if q < 0]
        left = max(1.0 - sum(q for _, q in nxt if q >= 0), 0.0)
        for dst, q in nxt:
            q = q if q >= 0 else left / len(free)
            n = by_id.get(dst)
            if dst in loops:
                total_p, total_t = total_p + p * q, total_t + p * q * t
            elif dst not in seen and n is not None and not isinstance(n, LlmNode):
                lat = _mean(n.latency_s) if isinstance(n, ToolNode) else 0.0
                stack.append((dst, p * q, t + lat, seen | {dst}))
    return total_t / total_p if total_p > 0 else 0.0
