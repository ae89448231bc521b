"""Python builder for agent graphs: the same models and checks as the YAML loader, without a file.

    agent = (AgentBuilder("voice")
             .node("asr", "stt", audio_s=8)
             .node("think", "llm", model="llama-3-70b", input_tokens=512, output_tokens=256)
             .edge("asr", "think")
             .build())
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
    def __init__(self, name: str, description: str | None = None) -> None:
        self._name, self._description = name, description
        self._nodes: list[dict[str, Any]] = []
        self._edges: list[dict[str, Any]] = []

    def node(self, node_id: str, kind: str, **fields: Any) -> AgentBuilder:
        self._nodes.append({"id": node_id, "kind": kind, **fields})
        return self

    def subagent(self, node_id: str, inner: Agent | AgentBuilder) -> AgentBuilder:
        graph = (inner.build() if isinstance(inner, AgentBuilder) else inner).graph
        self._nodes.append({"id": node_id, "kind": "subagent", "graph": graph})
        return self

    def edge(self, src: str, dst: str, **fields: Any) -> AgentBuilder:
        self._edges.append({"from": src, "to": dst, **fields})
        return self

    def chain(self, *node_ids: str) -> AgentBuilder:
        for src, dst in itertools.pairwise(node_ids):
            self.edge(src, dst)
        return self

    def build(self, catalog: Catalog | None = None) -> Agent:
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
