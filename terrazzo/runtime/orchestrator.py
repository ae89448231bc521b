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
import hashlib
import itertools
import pickle
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from terrazzo.runtime.backends.pool_backend import PoolBackend, Steps
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.executors.text import ConditionUnknown, condition_names, evaluate, merge, new_message
from terrazzo.runtime.failures import ExecutionError, SegmentFailed
from terrazzo.runtime.pool_layout import OpPlacement, RuntimePlan
from terrazzo.runtime.program import NodeProgram, steps
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
    error_kind: str | None = None  # the failure's exception type: Overloaded, OpTimeout, WorkerLost, ExecutionError
    e2e_s: float = 0.0
    path: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    samples: list[OpSample] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _GraphInfo:
    nodes: dict[str, Node]
    repeat: set[int]                 # loop → body edges
    fan_in: dict[str, list[int]]     # non-repeat in-edges per node
    out: dict[str, list[int]]        # out-edges per node


@dataclass(frozen=True)
class _Segment:
    paths: tuple[str, ...]           # node paths, in order
    last: str                        # id of the last node, where routing continues
    pool: str
    device: str
    steps: Steps                     # its ops with their timeouts and retry policy
    blob: bytes                      # the pickled programs, cached by key in the worker
    key: str


_MAX_SEGMENT_NODES = 64


@dataclass
class _Req:
    id: str
    rng: random.Random
    result: RequestResult
    loops: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    span: Any = None
    span_ctx: Any = None
    on_event: Callable[[dict[str, Any]], None] | None = None


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
        self._programs: dict[str, NodeProgram] = {}
        self._graphs: dict[int, _GraphInfo] = {}
        self._segments: dict[tuple[int, str, str], _Segment | None] = {}
        self._ids = itertools.count()
        self.backend: PoolBackend | None = None

    # --- set-up ---------------------------------------------------------------------------------
    def _node_ops(self, path: str, node: Any) -> list[str]:
        if node.kind == "llm":
            return self._llm_ops(path, node)[1]
        if node.kind == "memory_lookup":
            return [f"{path}.embed", f"{path}.search"]
        if node.kind == "tool":
            return list(dict.fromkeys([self._tool_op(path, "lookup"), self._tool_op(path, "compute")]))
        return [] if node.kind in ("branch", "loop") else [path]

    def _ops_needed(self, graph: AgentGraph, prefix: str = "") -> list[str]:
        ops: list[str] = []
        for node in graph.nodes:
            p = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                ops += self._ops_needed(node.graph, p + "/")
            else:
                ops += self._node_ops(p, node)
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
                ckpt = self.config.path(t.checkpoint) if t is not None and mapped else self.config.tiny_checkpoint()
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
            self._index_dirs[path] = str(index_dir)
            self.notes.append(f"lookup '{path}': FAISS flat-IP index of {meta['vectors']} passages × "
                              f"{meta['dimension']} dims from {docs} (MiniLM embeddings), at {index_dir}")
        elif node.kind == "tool":
            t = self.config.tools.get(path)
            target = {"function": node.function if node.protocol == "python" else None,
                                      "endpoint": node.endpoint if node.protocol == "http" else None,
                                      "method": "POST", "timeout_s": 10.0, "retries": 2,
                                      "max_response_bytes": 1 << 20, "idempotent": None}
            if t is not None:
                target.update({"timeout_s": t.timeout_s, "retries": t.retries, "method": t.method,
                               "max_response_bytes": t.max_response_bytes, "idempotent": t.idempotent})
                if t.function:
                    target.update(function=t.function, endpoint=None)
                elif t.endpoint:
                    target.update(endpoint=t.endpoint, function=None)
            if target["idempotent"] is None:  # default: HTTP GET is idempotent by HTTP's own rules; others are not
                target["idempotent"] = bool(target["endpoint"]) and target["method"] == "GET"
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
        self._build(self.agent.graph)
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

    # --- programs and fused segments ----------------------------------------------------------------
    def _build(self, graph: AgentGraph, prefix: str = "") -> None:
        """Per graph: node table, fan-in and repeat edges (once, not per request); per node its program."""
        nodes = graph.by_id()
        repeat = graph.repeat_edges()
        fan_in = {nid: [j for j, e in enumerate(graph.edges) if e.dst == nid and j not in repeat] for nid in nodes}
        out = {nid: [j for j, e in enumerate(graph.edges) if e.src == nid] for nid in nodes}
        self._graphs[id(graph)] = _GraphInfo(nodes, repeat, fan_in, out)
        for node in graph.nodes:
            path = prefix + node.id
            if isinstance(node, SubagentNode) and node.graph is not None:
                self._build(node.graph, path + "/")
                continue
            ctx: dict[str, Any] = {}
            if node.kind == "llm":
                ctx = {"mode": self._llm_ops(path, node)[0], "target": self._model_target(node.model),
                       "max_new_tokens": self.config.max_new_tokens}
            elif node.kind in ("memory_lookup", "embed"):
                ctx = {"model_dir": str(self.config.embed_path()), "index_dir": self._index_dirs.get(path)}
            elif node.kind == "tool":
                ctx = {"tool": self._tools[path]}
            self._programs[path] = NodeProgram(path, node, tuple(self._node_ops(path, node)), ctx)

    def _segment(self, graph: AgentGraph, prefix: str, nid: str) -> _Segment | None:
        """The longest chain from `nid` whose ops all sit on one pool and whose edges need no decision
        (one unconditional out-edge into a node that runs per arriving input), when it has ≥ 2 ops: run
        as one worker round trip. None: run the node op by op."""
        key = (id(graph), prefix, nid)
        if key in self._segments:
            return self._segments[key]
        g = self._graphs[id(graph)]
        chain: list[NodeProgram] = []
        pool: str | None = None
        cur: str | None = nid
        while cur is not None and self.config.fuse_ops and len(chain) < _MAX_SEGMENT_NODES:
            node = g.nodes[cur]
            prog = self._programs.get(prefix + cur)
            pools = {self.plan.placement(op).pool for op in prog.ops} if prog else set()
            if prog is None or node.kind in ("branch", "loop") or len(pools) != 1 or (pool and pools != {pool}):
                break
            if chain and node.join == "all" and len(g.fan_in[cur]) > 1:
                break
            chain.append(prog)
            pool = pools.pop()
            nxt = g.out[cur]
            cur = graph.edges[nxt[0]].dst if len(nxt) == 1 and nxt[0] not in g.repeat else None
        ops = [op for prog in chain for op in prog.ops]
        seg = None
        if len(ops) >= 2:
            assert pool is not None
            place = self.plan.placement(ops[0])
            blob = pickle.dumps(tuple(chain), protocol=pickle.HIGHEST_PROTOCOL)
            seg = _Segment(tuple(p.path for p in chain), chain[-1].node.id, pool, place.device,
                           Steps(tuple(ops), tuple(self.config.timeout_for(op) for op in ops),
                                 tuple(p.retryable(op) for p in chain for op in p.ops)),
                           blob, hashlib.sha1(blob).hexdigest())
        self._segments[key] = seg
        return seg

    # --- ops ------------------------------------------------------------------------------------
    def _emit(self, req: _Req, event: dict[str, Any]) -> None:
        """Hand one event to the request's listener; a listener that raises is dropped (noted), never the run."""
        if req.on_event is None:
            return
        try:
            req.on_event(event)
        except Exception as exc:  # the listener's bug must not fail the request
            req.on_event = None
            self.notes.append(f"request {req.id}: on_event raised {type(exc).__name__}: {exc}; events stopped")

    def _worker_events(self, req: _Req, pool: str, device: str) -> Callable[[dict[str, Any]], None]:
        """Forward a submission's worker events exactly once: a retried op streams its tokens again from
        index 0 (and a retried segment its starts/ends again); those already delivered are dropped."""
        delivered: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        t_prev = time.perf_counter()  # submission, then each fused op's end: the next op's latency starts there

        def forward(ev: dict[str, Any]) -> None:
            nonlocal t_prev
            kind, op = ev.get("type"), ev.get("op", "")
            if kind == "token":
                i = ev.get("index", 0)
                if i < delivered.get(op, 0):
                    return
                delivered[op] = i + 1
            elif kind in ("op_start", "op_end"):  # ops inside a fused segment
                if (kind, op) in seen:
                    return
                seen.add((kind, op))
                ev = {**ev, "pool": pool, "device": device}
                if kind == "op_end":
                    now = time.perf_counter()
                    ev["latency_s"], t_prev = now - t_prev, now
            self._emit(req, ev)

        return forward

    def _record(self, req: _Req, op: str, pool: str, device: str, start_ns: int, latency_s: float,
                res: OpResult | None, error: str | None, **extra: Any) -> None:
        """Record one op: span, metrics, the request's sample."""
        exec_s, tokens, worker = (res.exec_s, res.tokens, res.worker) if res else (None, 0, "")
        self.telemetry.op_done(op, pool, device, req.id, req.span_ctx, start_ns, latency_s, exec_s, tokens, worker,
                               error, extra)
        req.result.samples.append(OpSample(req.id, op, pool, device, latency_s, exec_s, tokens, worker, error,
                                           dict(res.info) if res else {}))

    async def _op(self, req: _Req, op: str, kind: str, payload: Any, retryable: bool) -> OpResult:
        assert self.backend is not None, "Runtime.start() first"
        place: OpPlacement = self.plan.placement(op)
        streaming = req.on_event is not None
        if streaming:
            self._emit(req, {"type": "op_start", "op": op, "pool": place.pool, "device": place.device})
        start_ns, t0 = time.time_ns(), time.perf_counter()
        try:
            res = await self.backend.submit(place.pool, OpCall(req.id, op, kind, payload, stream=streaming),
                                            self.config.timeout_for(op),
                                            self._worker_events(req, place.pool, place.device) if streaming else None,
                                            retryable=retryable)
        except ExecutionError as exc:
            lat = time.perf_counter() - t0
            self._record(req, op, place.pool, place.device, start_ns, lat, None, str(exc))
            self._emit(req, {"type": "op_end", "op": op, "pool": place.pool, "device": place.device,
                             "latency_s": lat, "ok": False, "error": str(exc)})
            raise
        lat = time.perf_counter() - t0
        self._record(req, op, place.pool, place.device, start_ns, lat, res, None)
        if streaming:
            self._emit(req, {"type": "op_end", "op": op, "pool": place.pool, "device": place.device,
                             "latency_s": lat, "exec_s": res.exec_s, "tokens": res.tokens, "worker": res.worker,
                             "ok": True})
        return res

    async def _run_segment(self, req: _Req, seg: _Segment, msg: dict[str, Any]) -> dict[str, Any]:
        """One round trip runs the segment's ops back to back in a worker of its pool. Each op still gets
        its sample, span and metrics from the worker's own timings; the queueing and transport of the
        round trip count toward the first op's latency."""
        assert self.backend is not None, "Runtime.start() first"
        streaming = req.on_event is not None
        if streaming:
            self._emit(req, {"type": "op_start", "op": seg.steps.ops[0], "pool": seg.pool, "device": seg.device})
        call = OpCall(req.id, "+".join(seg.paths), "segment", {"key": seg.key, "programs": seg.blob, "msg": msg},
                      stream=streaming)
        start_ns, t0 = time.time_ns(), time.perf_counter()
        try:
            res = await self.backend.submit(seg.pool, call, sum(seg.steps.timeouts_s),
                                            self._worker_events(req, seg.pool, seg.device) if streaming else None,
                                            steps=seg.steps)
        except SegmentFailed as failed:  # an op inside failed: the ops before it still get their samples
            t_ns = self._record_fused(req, seg, call.op, failed.done, start_ns, time.perf_counter() - t0, None)
            exc = failed.cause
            op, lat = exc.op or seg.steps.ops[len(failed.done)], (time.time_ns() - t_ns) / 1e9
            self._record(req, op, seg.pool, seg.device, t_ns, lat, None, str(exc), fused=call.op)
            self._emit(req, {"type": "op_end", "op": op, "pool": seg.pool, "device": seg.device, "latency_s": lat,
                             "ok": False, "error": str(exc)})
            raise exc from None
        except ExecutionError as exc:  # the round trip itself failed (timeout, worker lost, overload)
            op = exc.op if exc.op in seg.steps.ops else seg.steps.ops[0]
            self._record(req, op, seg.pool, seg.device, start_ns, time.perf_counter() - t0, None, str(exc))
            self._emit(req, {"type": "op_end", "op": op, "pool": seg.pool, "device": seg.device,
                             "latency_s": time.perf_counter() - t0, "ok": False, "error": str(exc)})
            raise
        self._record_fused(req, seg, call.op, res.value["done"], start_ns, time.perf_counter() - t0, res)
        return res.value["msg"]

    def _record_fused(self, req: _Req, seg: _Segment, label: str, done: list[dict], start_ns: int,
                      round_trip_s: float, res: OpResult | None) -> int:
        """Samples for the fused ops that completed. Op i's latency runs from its start to the next op's
        start in the worker (the glue in between is part of it); the round trip's queueing and transport
        go to the first op. Returns where the next op's span starts."""
        if not done:
            return start_ns
        worker_s = res.exec_s if res is not None else done[-1]["start_s"] + done[-1]["exec_s"]
        starts = [d["start_s"] for d in done] + [worker_s]
        overhead_s = max(round_trip_s - worker_s, 0.0) if res is not None else 0.0
        t_ns = start_ns
        worker, pid = (res.worker, res.pid) if res is not None else (done[0].get("worker", ""), 0)
        for i, d in enumerate(done):
            lat = starts[i + 1] - starts[i] + (overhead_s + starts[0] if i == 0 else 0.0)
            self._record(req, d["op"], seg.pool, seg.device, t_ns, lat,
                         OpResult(None, d["exec_s"], worker, pid, d["tokens"], d["info"]), None, fused=label)
            t_ns += int(lat * 1e9)
        return t_ns

    async def _exec_node(self, req: _Req, path: str, node: Node, msg: dict[str, Any]) -> dict[str, Any]:
        if isinstance(node, SubagentNode):
            assert node.graph is not None
            return await self._run_graph(req, node.graph, path + "/", {**msg, "path": [*msg.get("path", []), path]})
        prog = self._programs[path]
        gen = steps(prog, msg, req.id)
        try:
            op, kind, payload = next(gen)
            while True:
                res = await self._op(req, op, kind, payload, prog.retryable(op))
                op, kind, payload = gen.send(res)
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()

    # --- routing --------------------------------------------------------------------------------
    def _route(self, req: _Req, graph: AgentGraph, path: str, node: Node, out: dict[str, Any]) -> list[int]:
        idx = self._graphs[id(graph)].out[node.id]
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
        g = self._graphs[id(graph)]
        waiting: dict[str, dict[int, dict[str, Any]]] = {}
        finals: list[dict[str, Any]] = []

        async with asyncio.TaskGroup() as tg:
            async def visit(nid: str, m: dict[str, Any]) -> None:
                while True:  # follows the first successor in this task; others get their own
                    seg = self._segment(graph, prefix, nid)
                    req.steps += len(seg.paths) if seg else 1
                    if req.steps > self.config.max_steps_per_request:
                        raise ExecutionError(f"request ran more than {self.config.max_steps_per_request} node "
                                             "visits", op=prefix + nid,
                                             fix="raise max_steps_per_request or check loop bounds")
                    if seg is not None:
                        out, nid = await self._run_segment(req, seg, m), seg.last
                    else:
                        out = await self._exec_node(req, prefix + nid, g.nodes[nid], m)
                    nxt = self._route(req, graph, prefix + nid, g.nodes[nid], out)
                    if not nxt:
                        finals.append(out)
                    follow: list[str] = []
                    for j in nxt:
                        e = graph.edges[j]
                        if g.nodes[e.dst].join == "all" and j not in g.repeat and len(g.fan_in[e.dst]) > 1:
                            got = waiting.setdefault(e.dst, {})
                            got[j] = out
                            if len(got) == len(g.fan_in[e.dst]):
                                waiting.pop(e.dst)
                                tg.create_task(visit(e.dst, merge([got[k] for k in g.fan_in[e.dst]])))
                        elif not follow:
                            follow.append(e.dst)
                        else:
                            tg.create_task(visit(e.dst, out))
                    if not follow:
                        return
                    nid, m = follow[0], out

            for nid in g.nodes:
                if not g.fan_in[nid]:
                    tg.create_task(visit(nid, msg))
        if waiting:
            self.notes.append(f"join 'all' at {', '.join(prefix + w for w in waiting)} never got all its inputs")
        return merge(finals) if len(finals) > 1 else (finals[0] if finals else msg)

    async def run(self, text: str, *, request_id: str | None = None, session: str | None = None,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> RequestResult:
        """Run one request end to end; never raises for op failures — the result says ok/error.

        `on_event`, when given, is called on the event loop, in order, with `{"type": "op_start", "op",
        "pool", "device"}` when an op is submitted to its pool, `{"type": "token", "op", "text", "index",
        "token_id"}` for each LLM token as the decode worker produces it, and `{"type": "op_end", "op",
        "pool", "device", "latency_s", "exec_s", "tokens", "worker", "ok"}` (or `"ok": False, "error"`)."""
        rid = request_id or f"r{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        result = RequestResult(rid, text, ok=False)
        req = _Req(rid, random.Random(f"{self.config.seed}:{rid}"), result, on_event=on_event)
        t0 = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span(f"request {self.agent.name}") as span:
            span.set_attribute("tz.request", rid)
            req.span, req.span_ctx = span, self.telemetry.context_of(span)
            try:
                out = await self._run_graph(req, self.agent.graph, "", new_message(text, session or rid))
                result.ok, result.text, result.path = True, out.get("speech") or out["text"], out.get("path", [])
                result.output = {k: v for k, v in out.items() if k != "embedding"}
            except* ExecutionError as group:
                exc = group.exceptions[0]
                while isinstance(exc, ExceptionGroup):
                    exc = exc.exceptions[0]
                result.error, result.error_kind = str(exc), type(exc).__name__
                span.set_attribute("tz.error", result.error)
        result.e2e_s = time.perf_counter() - t0
        self.telemetry.requests.labels("ok" if result.ok else "error").inc()
        return result

    async def stream(self, text: str, *, request_id: str | None = None,
                     session: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """`run` as an async iterator: the events `on_event` would get, then `{"type": "result", "result":
        RequestResult}`. Leaving the iteration early cancels the request."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        task = asyncio.create_task(self.run(text, request_id=request_id, session=session, on_event=q.put_nowait))
        task.add_done_callback(lambda _: q.put_nowait(None))
        try:
            while (ev := await q.get()) is not None:
                yield ev
            yield {"type": "result", "result": task.result()}
        finally:
            if not task.done():
                task.cancel()
