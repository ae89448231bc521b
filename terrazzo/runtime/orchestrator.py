"""The orchestrator: runs each request through the agent graph, each granular op on a worker of the
pool the plan placed it on, moving results (and the LLM's KV cache) between pools.

Graph semantics follow the spec (terrazzo/spec/agent.py): entry nodes start; a node with
`join: all` waits for one input on each of its (non-repeat) in-edges, any other node runs once per
arriving input; a branch takes exactly one out-edge; a loop sends the flow back to its body at most
`bound` times per request, then leaves by its other edges; a sub-agent runs its own graph.

Branch routing: with `routing: outputs` (default), edges whose `condition` the runtime can evaluate
on the real output (names: tool_call, text, input, context, tool_results, rounds) decide; the first
true one is taken, else an unconditioned edge (sampled by probability when several). A condition
that cannot be evaluated, or `routing: sample`, samples every edge with its probability from an RNG
seeded by (seed, request id), so a run is reproducible whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from terrazzo.runtime.backends.base import PoolBackend
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.errors import ExecutionError
from terrazzo.runtime.executors.text import (
    ConditionUnknown,
    build_prompt,
    condition_names,
    evaluate,
    merge,
    new_message,
    parse_tool_call,
)
from terrazzo.runtime.placement import OpPlacement, RuntimePlan
from terrazzo.runtime.telemetry import Telemetry
from terrazzo.runtime.worker import OpCall, OpResult
from terrazzo.spec.agent import Agent, AgentGraph, LoopNode, Node, SubagentNode


@dataclass
class OpSample:
    request_id: str
    op: str
    pool: str
    device: str
    latency_s: float          # submit → result, as the orchestrator sees it
    exec_s: float | None      # inside the worker
    tokens: int = 0
    worker: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestResult:
    request_id: str
    input: str
    ok: bool
    text: str = ""
    error: str | None = None
    e2e_s: float = 0.0
    path: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    samples: list[OpSample] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Req:
    id: str
    rng: random.Random
    result: RequestResult
    loops: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    span: Any = None


def make_backend(name: str, config: RunConfig, pools: dict) -> PoolBackend:
    if name == "local":
        from terrazzo.runtime.backends.local import LocalBackend

        return LocalBackend(config, pools)
    if name == "ray":
        from terrazzo.runtime.backends.ray_backend import RayBackend

        return RayBackend(config, pools)
    raise ExecutionError(f"unknown backend '{name}'", fix="use --backend local or --backend ray")


class Runtime:
    """One agent + plan + config, with its pools started; `run()` is safe to call concurrently."""

    def __init__(self, agent: Agent, plan: RuntimePlan, config: RunConfig, backend: str = "local",
                 telemetry: Telemetry | None = None) -> None:
        self.agent, self.plan, self.config = agent, plan, config
        self.backend_name = backend
        self.telemetry = telemetry or Telemetry()
        self.notes: list[str] = []
        self._model_targets: dict[str, dict[str, Any]] = {}
        self._index_dirs: dict[str, str] = {}
        self._tools: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count()
        self.backend: PoolBackend | None = None

    # --- set-up ---------------------------------------------------------------------------------
    def _ops_needed(self, graph: AgentGraph, prefix: str = "") -> list[str]:
        ops: list[str] = []
        for node in graph.nodes:
            p = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                ops += self._ops_needed(node.graph, p + "/")
            elif node.kind == "llm":
                ops += self._llm_ops(p, node)[1]
            elif node.kind == "memory_lookup":
                ops += [f"{p}.embed", f"{p}.search"]
            elif node.kind == "tool":
                ops += [self._tool_op(p, "lookup"), self._tool_op(p, "compute")]
            elif node.kind not in ("branch", "loop"):
                ops.append(p)
        return ops

    def _llm_ops(self, path: str, node: Any) -> tuple[str, list[str]]:
        """('disaggregated', [prefill, decode]) when the plan splits the call and the model runs
        in-process; else ('aggregated', [op])."""
        target = self._model_target(node.model)
        if self.plan.has(f"{path}.prefill") and self.plan.has(f"{path}.decode") and not target.get("endpoint"):
            return "disaggregated", [f"{path}.prefill", f"{path}.decode"]
        for name in (f"{path}.aggregated", path, f"{path}.decode"):
            if self.plan.has(name):
                return "aggregated", [name]
        return "aggregated", [f"{path}.aggregated"]

    def _tool_op(self, path: str, part: str) -> str:
        name = f"{path}.{part}"
        return name if self.plan.has(name) or not self.plan.has(path) else path

    def _model_target(self, model: str) -> dict[str, Any]:
        if model not in self._model_targets:
            t = self.config.models.get(model)
            if t is not None and t.endpoint:
                self._model_targets[model] = {"endpoint": t.endpoint, "served_name": t.served_name or model,
                                              "api_key": t.api_key}
            else:
                mapped = t is not None and t.checkpoint
                ckpt = self.config.path(t.checkpoint) if mapped else self.config.tiny_checkpoint()  # type: ignore[union-attr]
                self._model_targets[model] = {"checkpoint": str(ckpt)}
        return self._model_targets[model]

    def _prepare_node(self, path: str, node: Any) -> None:
        from pathlib import Path

        from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, is_random_checkpoint, make_tiny_checkpoint

        if node.kind == "llm":
            target = self._model_target(node.model)
            ckpt = target.get("checkpoint")
            if ckpt and ckpt == str(self.config.tiny_checkpoint()) and not (Path(ckpt) / "config.json").exists():
                make_tiny_checkpoint(ckpt)  # only the default location is created; a mapped one must exist
            elif ckpt and not (Path(ckpt) / "config.json").exists():
                raise ExecutionError(f"checkpoint '{ckpt}' for model '{node.model}' has no config.json",
                                     fix="fix models: in the run config, or drop the entry to use the tiny "
                                         "random-weight default (terrazzo models make-tiny)")
            where = target.get("endpoint") or ckpt
            note = f"model '{node.model}' → {where}"
            if ckpt and is_random_checkpoint(ckpt):
                note += f" ({RANDOM_WEIGHTS_NOTE})"
            if note not in self.notes:
                self.notes.append(note)
        elif node.kind == "memory_lookup":
            from terrazzo.runtime.executors.vector import Embedder, build_index

            lk = self.config.lookups.get(path)
            docs = self.config.path((lk.documents if lk else None) or self.config.documents)
            if docs is None:
                raise ExecutionError(f"memory_lookup '{path}' has no documents to index",
                                     fix="set documents: (or lookups: {" + path + ": {documents: DIR}}) "
                                         "in the run config")
            index_dir = self.config.path(lk.index_dir if lk and lk.index_dir else None) or (
                Path(self.config.path(self.config.state_dir)) / "index" / path.replace("/", "__"))
            meta = build_index(docs, index_dir, Embedder(self.config.embed_path()))
            self._index_dirs[path] = str(index_dir)
            self.notes.append(f"lookup '{path}': FAISS flat-IP index of {meta['vectors']} passages × "
                              f"{meta['dimension']} dims from {docs} (MiniLM embeddings), at {index_dir}")
        elif node.kind == "tool":
            t = self.config.tools.get(path)
            target: dict[str, Any] = {"function": node.function if node.protocol == "python" else None,
                                      "endpoint": node.endpoint if node.protocol == "http" else None,
                                      "timeout_s": 10.0, "retries": 2, "max_response_bytes": 1 << 20}
            if t is not None:
                target.update({"timeout_s": t.timeout_s, "retries": t.retries,
                               "max_response_bytes": t.max_response_bytes})
                if t.function:
                    target.update(function=t.function, endpoint=None)
                elif t.endpoint:
                    target.update(endpoint=t.endpoint, function=None)
            self._tools[path] = target

    def _warmup_items(self, graph: AgentGraph, prefix: str = "", out: dict | None = None) -> dict[str, list]:
        """Per pool, what its workers load at start: checkpoints, the embedder, FAISS indexes."""
        out = {} if out is None else out

        def add(op: str, kind: str, key: str) -> None:
            items = out.setdefault(self.plan.placement(op).pool, [])
            if {"kind": kind, "key": key} not in items:
                items.append({"kind": kind, "key": key})

        for node in graph.nodes:
            p = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                self._warmup_items(node.graph, p + "/", out)
            elif node.kind == "llm" and "checkpoint" in self._model_target(node.model):
                for op in self._llm_ops(p, node)[1]:
                    add(op, "llm", self._model_target(node.model)["checkpoint"])
            elif node.kind == "memory_lookup":
                add(f"{p}.embed", "embed", str(self.config.embed_path()))
                add(f"{p}.search", "index", self._index_dirs[p])
            elif node.kind == "embed":
                add(p, "embed", str(self.config.embed_path()))
        return out

    def _prepare(self, graph: AgentGraph, prefix: str = "") -> None:
        for node in graph.nodes:
            if isinstance(node, SubagentNode) and node.graph is not None:
                self._prepare(node.graph, f"{prefix}{node.id}/")
            else:
                self._prepare_node(prefix + node.id, node)

    async def start(self) -> Runtime:
        await asyncio.to_thread(self._prepare, self.agent.graph)
        pools = self.plan.pools(self.config.min_workers_per_pool, self.config.max_workers_per_pool,
                                self._ops_needed(self.agent.graph))
        for p in pools.values():
            self.telemetry.register_pool(p.name, p.device)
        self.backend = make_backend(self.backend_name, self.config, pools)
        self.backend.on_queue_depth = self.telemetry.set_queue_depth
        if self.config.warmup:
            self.backend.warmup = self._warmup_items(self.agent.graph)
        await self.backend.start()
        return self

    async def stop(self) -> None:
        if self.backend is not None:
            await self.backend.stop()
            self.backend = None

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- ops ------------------------------------------------------------------------------------
    async def _op(self, req: _Req, op: str, kind: str, payload: Any) -> OpResult:
        assert self.backend is not None, "Runtime.start() first"
        place: OpPlacement = self.plan.placement(op)
        t0 = time.perf_counter()
        with self.telemetry.op_span(op, place.pool, place.device, req.id, req.span) as span:
            try:
                call = OpCall(req.id, op, kind, payload)
                res = await self.backend.submit(place.pool, call, self.config.timeout_for(op))
            except ExecutionError as exc:
                lat = time.perf_counter() - t0
                self.telemetry.record_op(span, op, place.pool, place.device, lat, None, 0, str(exc))
                req.result.samples.append(OpSample(req.id, op, place.pool, place.device, lat, None, error=str(exc)))
                raise
            lat = time.perf_counter() - t0
            span.set_attribute("tz.worker", res.worker)
            self.telemetry.record_op(span, op, place.pool, place.device, lat, res.exec_s, res.tokens, None)
        req.result.samples.append(OpSample(req.id, op, place.pool, place.device, lat, res.exec_s, res.tokens,
                                           res.worker, info=res.info))
        return res

    async def _exec_node(self, req: _Req, path: str, node: Node, msg: dict[str, Any]) -> dict[str, Any]:
        msg = {**msg, "path": [*msg.get("path", []), path]}
        kind = node.kind
        if kind in ("branch", "loop"):
            return msg
        if isinstance(node, SubagentNode):
            assert node.graph is not None
            return await self._run_graph(req, node.graph, path + "/", msg)
        if kind == "llm":
            return await self._exec_llm(req, path, node, msg)
        if kind == "memory_lookup":
            vec = (await self._op(req, f"{path}.embed", "embed",
                                  {"texts": [msg["text"]], "model_dir": str(self.config.embed_path())})).value[0]
            hits = (await self._op(req, f"{path}.search", "ann.search",
                                   {"vector": vec, "k": node.k, "index_dir": self._index_dirs[path]})).value
            return {**msg, "context": [*msg["context"], *(h["text"] for h in hits)],
                    "hits": [{"source": h["source"], "score": h["score"]} for h in hits]}
        if kind == "embed":
            vec = (await self._op(req, path, "embed", {"texts": [msg["text"]],
                                                       "model_dir": str(self.config.embed_path())})).value[0]
            return {**msg, "embedding": vec}
        if kind == "tool":
            target = (await self._op(req, self._tool_op(path, "lookup"), "tool.lookup", self._tools[path])).value
            query = str(msg.get("tool_args", {}).get("query") or msg["input"])
            out = (await self._op(req, self._tool_op(path, "compute"), "tool.compute",
                                  {"target": target, "query": query, "args": msg.get("tool_args", {})})).value
            return {**msg, "tool_results": [*msg["tool_results"], f"{node.id}: {out}"], "tool_call": None,
                    "tool_args": {}}
        if kind == "stt":
            res = await self._op(req, path, "stt", {"text": msg["text"]})
            return {**msg, "text": res.value, "input": res.value, "stt_mode": res.info.get("mode")}
        if kind == "tts":
            res = await self._op(req, path, "tts", {"text": msg["text"], "name": f"{req.id}-{node.id}"})
            return {**msg, "speech": res.value, "tts_mode": res.info.get("mode")}
        if kind == "memory_load":
            hist = (await self._op(req, path, "memory.load", {"store": node.store, "session": msg["session"]})).value
            return {**msg, "history": [*msg["history"], *hist]}
        if kind == "memory_store":
            await self._op(req, path, "memory.store", {"store": node.store, "session": msg["session"],
                                                       "text": f"user: {msg['input']}\nassistant: {msg['text']}"})
            return msg
        if kind == "compute":
            out = (await self._op(req, path, "compute", {"function": node.function, "message": msg})).value
            if isinstance(out, dict):
                return {**msg, **out}
            text = str(out)
            call, args = parse_tool_call(text)
            return {**msg, "text": text, "tool_call": call, "tool_args": args}
        raise ExecutionError(f"node kind '{kind}' has no executor", op=path)

    async def _exec_llm(self, req: _Req, path: str, node: Any, msg: dict[str, Any]) -> dict[str, Any]:
        mode, ops = self._llm_ops(path, node)
        target = self._model_target(node.model)
        base = {"prompt": build_prompt(msg), "max_new_tokens": self.config.max_new_tokens, **target}
        if mode == "disaggregated":
            pre = await self._op(req, ops[0], "llm.prefill", base)
            res = await self._op(req, ops[1], "llm.decode", {"kv": pre.value, "checkpoint": target["checkpoint"]})
        else:
            res = await self._op(req, ops[0], "llm.aggregated", base)
        text = res.value.text
        call, args = parse_tool_call(text)
        return {**msg, "text": text, "tool_call": call, "tool_args": args,
                "llm_tokens": list(res.value.token_ids)}

    # --- routing --------------------------------------------------------------------------------
    def _route(self, req: _Req, graph: AgentGraph, path: str, node: Node, out: dict[str, Any]) -> list[int]:
        idx = [j for j, e in enumerate(graph.edges) if e.src == node.id]
        if isinstance(node, LoopNode):
            n = req.loops.get(path, 0)
            body = [j for j in idx if graph.edges[j].dst == node.body]
            if n < node.bound:
                req.loops[path] = n + 1
                req.result.decisions.append({"node": path, "to": node.body, "how": f"loop {n + 1}/{node.bound}"})
                return body
            rest = [j for j in idx if j not in body]
            req.result.decisions.append({"node": path, "to": [graph.edges[j].dst for j in rest],
                                         "how": f"loop bound {node.bound} reached"})
            return rest
        if node.kind != "branch":
            return idx
        edges = [graph.edges[j] for j in idx]
        if self.config.routing == "outputs" and any(e.condition for e in edges):
            try:
                names = condition_names(out)
                for j, e in zip(idx, edges, strict=True):
                    if e.condition and evaluate(e.condition, names):
                        req.result.decisions.append({"node": path, "to": e.dst, "how": f"condition {e.condition!r}"})
                        return [j]
                plain = [j for j, e in zip(idx, edges, strict=True) if not e.condition]
                if plain:
                    chosen = self._sample(req, graph, plain)
                    req.result.decisions.append({"node": path, "to": graph.edges[chosen].dst,
                                                 "how": "no condition true; unconditioned edge"})
                    return [chosen]
            except ConditionUnknown as exc:
                req.result.decisions.append({"node": path, "note": f"condition not evaluable ({exc}); sampling"})
        chosen = self._sample(req, graph, idx)
        req.result.decisions.append({"node": path, "to": graph.edges[chosen].dst, "how": "sampled by probability"})
        return [chosen]

    @staticmethod
    def _sample(req: _Req, graph: AgentGraph, idx: list[int]) -> int:
        weights = [graph.edges[j].probability or 0.0 for j in idx]
        if sum(weights) <= 0:
            weights = [1.0] * len(idx)
        return req.rng.choices(idx, weights=weights)[0]

    # --- graph walk -----------------------------------------------------------------------------
    async def _run_graph(self, req: _Req, graph: AgentGraph, prefix: str, msg: dict[str, Any]) -> dict[str, Any]:
        nodes = graph.by_id()
        repeat = graph.repeat_edges()
        fan_in = {nid: [j for j, e in enumerate(graph.edges) if e.dst == nid and j not in repeat] for nid in nodes}
        waiting: dict[str, dict[int, dict[str, Any]]] = {}
        finals: list[dict[str, Any]] = []

        async with asyncio.TaskGroup() as tg:
            async def visit(nid: str, m: dict[str, Any]) -> None:
                req.steps += 1
                if req.steps > self.config.max_steps_per_request:
                    raise ExecutionError(f"request ran more than {self.config.max_steps_per_request} node visits",
                                         op=prefix + nid, fix="raise max_steps_per_request or check loop bounds")
                out = await self._exec_node(req, prefix + nid, nodes[nid], m)
                nxt = self._route(req, graph, prefix + nid, nodes[nid], out)
                if not nxt:
                    finals.append(out)
                for j in nxt:
                    e = graph.edges[j]
                    if nodes[e.dst].join == "all" and j not in repeat and len(fan_in[e.dst]) > 1:
                        got = waiting.setdefault(e.dst, {})
                        got[j] = out
                        if len(got) == len(fan_in[e.dst]):
                            waiting.pop(e.dst)
                            tg.create_task(visit(e.dst, merge([got[k] for k in fan_in[e.dst]])))
                    else:
                        tg.create_task(visit(e.dst, out))

            for nid in nodes:
                if not fan_in[nid]:
                    tg.create_task(visit(nid, msg))
        if waiting:
            self.notes.append(f"join 'all' at {', '.join(prefix + w for w in waiting)} never got all its inputs")
        return merge(finals) if len(finals) > 1 else (finals[0] if finals else msg)

    async def run(self, text: str, *, request_id: str | None = None, session: str | None = None) -> RequestResult:
        """Run one request end to end; never raises for op failures — the result says ok/error."""
        rid = request_id or f"r{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        result = RequestResult(rid, text, ok=False)
        req = _Req(rid, random.Random(f"{self.config.seed}:{rid}"), result)
        t0 = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span(f"request {self.agent.name}") as span:
            span.set_attribute("tz.request", rid)
            req.span = span
            try:
                out = await self._run_graph(req, self.agent.graph, "", new_message(text, session or rid))
                result.ok, result.text, result.path = True, out.get("speech") or out["text"], out.get("path", [])
                result.output = {k: v for k, v in out.items() if k != "embedding"}
            except* ExecutionError as group:
                exc = group.exceptions[0]
                while isinstance(exc, ExceptionGroup):
                    exc = exc.exceptions[0]
                result.error = str(exc)
                span.set_attribute("tz.error", result.error)
        result.e2e_s = time.perf_counter() - t0
        self.telemetry.requests.labels("ok" if result.ok else "error").inc()
        return result
