"""Python builder for agent graphs: the same models and checks as the YAML loader, without a file.

    agent = (AgentBuilder("voice")
             .node("asr", "stt", audio_s=8)
             .node("think", "llm", model="llama-3-70b", input_tokens=512, output_tokens=256)
             .edge("asr", "think")
             .build())

`terrazzo.build_agent(name)` returns one. Nothing is checked until `build()`, which validates every node
and edge as the YAML loader does and raises SpecError naming the field (`nodes.1.model`) and the fix.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import ValidationError

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import SpecError
from terrazzo.spec.agent import Agent
from terrazzo.spec.spec_loader import check_agent


class AgentBuilder:
    """Collects nodes and edges in call order; every method but `build` returns the builder, so calls chain."""

    def __init__(self, name: str, description: str | None = None) -> None:
        self._name, self._description = name, description
        self._nodes: list[dict[str, Any]] = []
        self._edges: list[dict[str, Any]] = []

    def node(self, node_id: str, kind: str, **fields: Any) -> AgentBuilder:
        """Add a node: `kind` is one of llm, tool, memory_load, memory_store, memory_lookup, embed, stt, tts,
        compute, branch, loop, subagent; `fields` are that kind's YAML fields (terrazzo/spec/agent.py), and
        take units or distributions as the YAML does (`latency_s="300 ms"`, `input_tokens={"dist": ...}`)."""
        self._nodes.append({"id": node_id, "kind": kind, **fields})
        return self

    def subagent(self, node_id: str, inner: Agent | AgentBuilder) -> AgentBuilder:
        """Add a node that runs another agent's graph inline (built first if given as a builder); its nodes
        are planned and reported as `node_id/child`."""
        graph = (inner.build() if isinstance(inner, AgentBuilder) else inner).graph
        self._nodes.append({"id": node_id, "kind": "subagent", "graph": graph})
        return self

    def edge(self, src: str, dst: str, **fields: Any) -> AgentBuilder:
        """Add an edge: `probability=` on every edge leaving a branch (they sum to 1), `data_bytes=` for the
        payload it carries; a loop node's edge to its `body` is what may close a cycle."""
        self._edges.append({"from": src, "to": dst, **fields})
        return self

    def chain(self, *node_ids: str) -> AgentBuilder:
        """Edges between consecutive nodes: chain("a", "b", "c") adds a→b and b→c."""
        for src, dst in itertools.pairwise(node_ids):
            self.edge(src, dst)
        return self

    def build(self, catalog: Catalog | None = None) -> Agent:
        """The validated Agent: node fields, graph structure (ids, edges, branch probabilities, bounded
        cycles) and model names against `catalog` (default: the shipped one); SpecError on the first problem."""
        data = {"name": self._name, "description": self._description,
                "graph": {"nodes": self._nodes, "edges": self._edges}}
        try:
            agent = Agent.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise SpecError(err["msg"].removeprefix("Value error, "), file=f"<builder {self._name}>", field=where,
                            fix="see the node kinds' fields in terrazzo/spec/agent.py") from None
        return check_agent(agent, catalog)
