"""Which out-edges a finished node takes: every edge of a plain node; a loop's body until its bound,
then its other edges; one edge of a branch, by a condition evaluated on the real output
(`routing: outputs`) or sampled by probability from the request's own RNG."""

from __future__ import annotations

from typing import Any

from terrazzo.runtime.executors.text import ConditionUnknown, condition_names, evaluate
from terrazzo.runtime.program_setup import GraphInfo
from terrazzo.runtime.results import RequestState
from terrazzo.spec.agent import AgentGraph, LoopNode, Node


def next_edges(req: RequestState, graph: AgentGraph, info: GraphInfo, path: str, node: Node, out: dict[str, Any],
               routing: str) -> list[int]:
    """The indices of the edges taken after `node` produced `out`; each decision goes to the result."""
    idx = info.out[node.id]
    decisions = req.result.decisions
    if isinstance(node, LoopNode):
        n = req.loops.get(path, 0)
        body = [j for j in idx if graph.edges[j].dst == node.body]
        if n < node.bound:
            req.loops[path] = n + 1
            decisions.append({"node": path, "to": node.body, "how": f"loop {n + 1}/{node.bound}"})
            return body
        rest = [j for j in idx if j not in body]
        decisions.append({"node": path, "to": [graph.edges[j].dst for j in rest],
                          "how": f"loop bound {node.bound} reached"})
        return rest
    if node.kind != "branch":
        return idx
    edges = [graph.edges[j] for j in idx]
    if routing == "outputs" and any(e.condition for e in edges):
        try:
            names = condition_names(out)
            for j, e in zip(idx, edges, strict=True):
                if e.condition and evaluate(e.condition, names):
                    decisions.append({"node": path, "to": e.dst, "how": f"condition {e.condition!r}"})
                    return [j]
            plain = [j for j, e in zip(idx, edges, strict=True) if not e.condition]
            if plain:
                chosen = sample_edge(req, graph, plain)
                decisions.append({"node": path, "to": graph.edges[chosen].dst,
                                  "how": "no condition true; unconditioned edge"})
                return [chosen]
        except ConditionUnknown as exc:
            decisions.append({"node": path, "note": f"condition not evaluable ({exc}); sampling"})
    chosen = sample_edge(req, graph, idx)
    decisions.append({"node": path, "to": graph.edges[chosen].dst, "how": "sampled by probability"})
    return [chosen]


def sample_edge(req: RequestState, graph: AgentGraph, idx: list[int]) -> int:
    weights = [graph.edges[j].probability or 0.0 for j in idx]
    if sum(weights) <= 0:
        weights = [1.0] * len(idx)
    return req.rng.choices(idx, weights=weights)[0]
