"""Program set-up, once per Runtime before any request: which granular ops each node runs (as the plan
split it), where each model really is (a checkpoint or an endpoint), the FAISS indexes and tool
targets, what each pool's workers load at start, and the per-node programs with the graph tables the
walk uses (fan-in, repeat edges, out-edges)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.pool_layout import RuntimePlan
from terrazzo.runtime.program import NodeProgram
from terrazzo.spec.agent import AgentGraph, Node, SubagentNode


@dataclass(frozen=True)
class GraphInfo:
    nodes: dict[str, Node]
    repeat: set[int]                 # loop → body edges
    fan_in: dict[str, list[int]]     # non-repeat in-edges per node
    out: dict[str, list[int]]        # out-edges per node


@dataclass
class ProgramSetup:
    plan: RuntimePlan
    config: RunConfig
    notes: list[str]                                   # shared with the Runtime: what a user should know
    model_targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    index_dirs: dict[str, str] = field(default_factory=dict)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    programs: dict[str, NodeProgram] = field(default_factory=dict)
    graphs: dict[int, GraphInfo] = field(default_factory=dict)
    random_weights: bool = False                       # some LLM runs a random-weight checkpoint (labelled everywhere)

    # --- ops per node ---------------------------------------------------------------------------
    def node_ops(self, path: str, node: Any) -> list[str]:
        if node.kind == "llm":
            return self.llm_ops(path, node)[1]
        if node.kind == "memory_lookup":
            return [f"{path}.embed", f"{path}.search"]
        if node.kind == "tool":
            return list(dict.fromkeys([self.tool_op(path, "lookup"), self.tool_op(path, "compute")]))
        return [] if node.kind in ("branch", "loop") else [path]

    def ops_needed(self, graph: AgentGraph, prefix: str = "") -> list[str]:
        ops: list[str] = []
        for node in graph.nodes:
            p = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                ops += self.ops_needed(node.graph, p + "/")
            else:
                ops += self.node_ops(p, node)
        return ops

    def llm_ops(self, path: str, node: Any) -> tuple[str, list[str]]:
        """('disaggregated', [prefill, decode]) when the plan splits the call and the model runs
        in-process; else ('aggregated', [op])."""
        target = self.model_target(node.model)
        if self.plan.has(f"{path}.prefill") and self.plan.has(f"{path}.decode") and not target.get("endpoint"):
            return "disaggregated", [f"{path}.prefill", f"{path}.decode"]
        for name in (f"{path}.aggregated", path, f"{path}.decode"):
            if self.plan.has(name):
                return "aggregated", [name]
        return "aggregated", [f"{path}.aggregated"]

    def tool_op(self, path: str, part: str) -> str:
        name = f"{path}.{part}"
        return name if self.plan.has(name) or not self.plan.has(path) else path

    def model_target(self, model: str) -> dict[str, Any]:
        if model not in self.model_targets:
            t = self.config.models.get(model)
            if t is not None and t.endpoint:
                self.model_targets[model] = {"endpoint": t.endpoint, "served_name": t.served_name or model,
                                             "api_key": t.api_key}
            else:
                mapped = t is not None and t.checkpoint
                ckpt = self.config.path(t.checkpoint) if mapped else self.config.tiny_checkpoint()  # type: ignore[union-attr]
                self.model_targets[model] = {"checkpoint": str(ckpt)}
                if t is not None and t.served_name:  # the name an engine serves it under (vLLM pools)
                    self.model_targets[model]["served_name"] = t.served_name
        return self.model_targets[model]

    # --- what the nodes need on disk --------------------------------------------------------------
    def prepare(self, graph: AgentGraph, prefix: str = "") -> None:
        for node in graph.nodes:
            if isinstance(node, SubagentNode) and node.graph is not None:
                self.prepare(node.graph, f"{prefix}{node.id}/")
            else:
                self._prepare_node(prefix + node.id, node)

    def _prepare_node(self, path: str, node: Any) -> None:
        from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, is_random_checkpoint, is_stale_tiny, make_tiny_checkpoint

        if node.kind == "llm":
            target = self.model_target(node.model)
            ckpt = target.get("checkpoint")
            default = ckpt == str(self.config.tiny_checkpoint())
            if ckpt and default and (not (Path(ckpt) / "config.json").exists() or is_stale_tiny(ckpt)):
                make_tiny_checkpoint(ckpt)  # only the default location is (re)made; a mapped one must exist
            elif ckpt and not (Path(ckpt) / "config.json").exists() and not self._attached(path, node):
                raise ExecutionError(f"checkpoint '{ckpt}' for model '{node.model}' has no config.json",
                                     fix="fix models: in the run config, or drop the entry to use the tiny "
                                         "random-weight default (terrazzo models make-tiny)")
            where = target.get("endpoint") or ckpt
            note = f"model '{node.model}' → {where}"
            if ckpt and is_random_checkpoint(ckpt):
                note += f" ({RANDOM_WEIGHTS_NOTE})"
                self.random_weights = True
            if note not in self.notes:
                self.notes.append(note)
        elif node.kind == "memory_lookup":
            from terrazzo.runtime.executors.vector import build_index

            lk = self.config.lookups.get(path)
            docs = self.config.path((lk.documents if lk else None) or self.config.documents)
            if docs is None:
                raise ExecutionError(f"memory_lookup '{path}' has no documents to index",
                                     fix="set documents: (or lookups: {" + path + ": {documents: DIR}}) "
                                         "in the run config")
            index_dir = self.config.path(lk.index_dir if lk and lk.index_dir else None) or (
                Path(self.config.path(self.config.state_dir)) / "index" / path.replace("/", "__"))
            meta = build_index(docs, index_dir, self.config.embed_path())
            self.index_dirs[path] = str(index_dir)
            self.notes.append(f"lookup '{path}': FAISS flat-IP index of {meta['vectors']} passages × "
                              f"{meta['dimension']} dims from {docs} (MiniLM embeddings), at {index_dir}")
        elif node.kind == "tool":
            t = self.config.tools.get(path)
            target_t: dict[str, Any] = {"function": node.function if node.protocol == "python" else None,
                                        "endpoint": node.endpoint if node.protocol == "http" else None,
                                        "method": "POST", "timeout_s": 10.0, "retries": 2,
                                        "max_response_bytes": 1 << 20, "idempotent": None}
            if t is not None:
                target_t.update({"timeout_s": t.timeout_s, "retries": t.retries, "method": t.method,
                                 "max_response_bytes": t.max_response_bytes, "idempotent": t.idempotent})
                if t.function:
                    target_t.update(function=t.function, endpoint=None)
                elif t.endpoint:
                    target_t.update(endpoint=t.endpoint, function=None)
            if target_t["idempotent"] is None:  # default: HTTP GET is idempotent by HTTP's own rules; others are not
                target_t["idempotent"] = bool(target_t["endpoint"]) and target_t["method"] == "GET"
            self.tools[path] = target_t

    def _attached(self, path: str, node: Any) -> bool:
        """Is the node's LLM served only by running vLLM servers (vllm.attach)? Then the checkpoint is theirs
        (a hub id or a path on their machines), not a folder here."""
        return all(self.plan.placement(op).pool in self.config.vllm.attach for op in self.llm_ops(path, node)[1])

    def warmup_items(self, graph: AgentGraph, prefix: str = "", out: dict | None = None) -> dict[str, list]:
        """Per pool, what its workers load at start: checkpoints, the embedder, FAISS indexes."""
        out = {} if out is None else out

        def add(op: str, kind: str, key: str) -> None:
            items = out.setdefault(self.plan.placement(op).pool, [])
            if {"kind": kind, "key": key} not in items:
                items.append({"kind": kind, "key": key})

        for node in graph.nodes:
            p = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                self.warmup_items(node.graph, p + "/", out)
            elif node.kind == "llm" and "checkpoint" in self.model_target(node.model):
                for op in self.llm_ops(p, node)[1]:
                    add(op, "llm", self.model_target(node.model)["checkpoint"])
            elif node.kind == "memory_lookup":
                add(f"{p}.embed", "embed", str(self.config.embed_path()))
                add(f"{p}.search", "index", self.index_dirs[p])
            elif node.kind == "embed":
                add(p, "embed", str(self.config.embed_path()))
        return out

    # --- programs -------------------------------------------------------------------------------
    def build(self, graph: AgentGraph, prefix: str = "") -> None:
        """Per graph: node table, fan-in and repeat edges (once, not per request); per node its program."""
        nodes = graph.by_id()
        repeat = graph.repeat_edges()
        fan_in = {nid: [j for j, e in enumerate(graph.edges) if e.dst == nid and j not in repeat] for nid in nodes}
        out = {nid: [j for j, e in enumerate(graph.edges) if e.src == nid] for nid in nodes}
        self.graphs[id(graph)] = GraphInfo(nodes, repeat, fan_in, out)
        for node in graph.nodes:
            path = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                self.build(node.graph, path + "/")
                continue
            ctx: dict[str, Any] = {}
            if node.kind == "llm":
                ctx = {"mode": self.llm_ops(path, node)[0], "target": self.model_target(node.model),
                       "max_new_tokens": self.config.max_new_tokens}
            elif node.kind in ("memory_lookup", "embed"):
                ctx = {"model_dir": str(self.config.embed_path()), "index_dir": self.index_dirs.get(path)}
            elif node.kind == "tool":
                ctx = {"tool": self.tools[path]}
            self.programs[path] = NodeProgram(path, node, tuple(self.node_ops(path, node)), ctx)
