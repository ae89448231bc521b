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

The jobs around the walk live in their own modules: program set-up (program_setup.py), fused segments
(segments.py), op events and telemetry (op_events.py), edge decisions (branching.py) and the router
that picks a pool and replica per op (routing.py).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from terrazzo.kv.prefix_keys import scope_key
from terrazzo.kv.routing import PoolShare, Router
from terrazzo.runtime.backends.pool_backend import PoolBackend
from terrazzo.runtime.branching import next_edges
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.engine_calls import ENGINE_KINDS, engine_call
from terrazzo.runtime.engines.engine_pool import EnginePool, Progress
from terrazzo.runtime.engines.launch import engine_ops, make_engine_pool, without_ops
from terrazzo.runtime.executors.text import merge, new_message
from terrazzo.runtime.failures import ExecutionError, SegmentFailed
from terrazzo.runtime.kv_cache import KvManager
from terrazzo.runtime.op_events import OpEvents, op_end_event, op_start_event
from terrazzo.runtime.pool_layout import PoolSpec, RuntimePlan
from terrazzo.runtime.program import NodeProgram, steps
from terrazzo.runtime.program_setup import ProgramSetup
from terrazzo.runtime.results import OpSample, RequestResult, RequestState
from terrazzo.runtime.segments import Segment, Segments
from terrazzo.runtime.telemetry import Telemetry
from terrazzo.runtime.worker import OpCall, OpResult
from terrazzo.spec.agent import Agent, AgentGraph, Node, SubagentNode

__all__ = ["OpSample", "RequestResult", "Runtime", "make_backend"]


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
        self.setup = ProgramSetup(plan, config, self.notes)
        self.engines: dict[str, EnginePool] = {}  # LLM pools served by vLLM servers (runtime/engines/)
        self.segments = Segments(self.setup, fusable=self._fusable)
        self.events = OpEvents(self.telemetry, self.notes)
        self.router = Router()
        self.kv = KvManager(config.kv)             # engine pools' cache-aware routing and sessions
        self.telemetry.registry.register(self.kv)  # tz_kv_* series, in the server's /metrics too
        self._sent: dict[str, dict[str, int]] = {}  # op -> pool -> calls routed there (the planner's shares)
        self._ids = itertools.count()
        self.backend: PoolBackend | None = None
        # (replica, seconds since launch, last log line), about once a second while an engine starts
        self.on_engine_progress: Progress | None = None

    # --- set-up ---------------------------------------------------------------------------------
    async def start(self) -> Runtime:
        await asyncio.to_thread(self.setup.prepare, self.agent.graph)
        self.setup.build(self.agent.graph)
        pools = self.plan.pools(self.config.min_workers_per_pool, self.config.max_workers_per_pool,
                                self.setup.ops_needed(self.agent.graph))
        for p in pools.values():
            self.telemetry.register_pool(p.name, p.device)
        pools = self._make_engines(pools)
        self.backend = make_backend(self.backend_name, self.config, pools)
        self.backend.on_queue_depth = self.telemetry.set_queue_depth
        if self.config.warmup:
            items = self.setup.warmup_items(self.agent.graph)
            self.backend.warmup = {k: v for k, v in items.items() if k in pools}
        try:
            await asyncio.gather(self.backend.start(), *(e.start(self.on_engine_progress)
                                                         for e in self.engines.values()))
        except BaseException:
            await self.stop()
            raise
        for e in self.engines.values():
            urls = ", ".join(r.url for r in e.replicas)
            self.notes.append(f"pool '{e.name}': {e.identity} × {len(e.replicas)} ({urls}), "
                              f"flags {' '.join(e.spec.args()[2:])}, KV cache {e.spec.kv_cache_gib} GiB; ready in "
                              f"{max(r.ready_s for r in e.replicas):.0f} s")
        return self

    def _make_engines(self, pools: dict[str, PoolSpec]) -> dict[str, PoolSpec]:
        """Engine pools for the LLM ops whose pool runs vLLM; returns the pools left for workers."""
        served, notes = engine_ops(self.setup, pools, self.config)
        self.notes.extend(notes)
        if self.backend_name == "ray" and served:
            from terrazzo.runtime.backends.ray_backend import ensure_ray

            ensure_ray(self.config.ray_address, {p.device for p in pools.values()})
        for name, u in served.items():
            self.engines[name] = make_engine_pool(pools[name], u.checkpoint, self.config, self.backend_name,
                                                  u.served_name, u.kv_role, self.kv)
            self.engines[name].notes = self.notes  # restarts and lost replicas show in the run's notes
        llm_ops = {op for p in self.setup.programs.values() if p.node.kind == "llm" for op in p.ops}
        left = {n: without_ops(p, llm_ops) if n in served else p for n, p in pools.items()}
        return {n: p for n, p in left.items() if p is not None}

    def _fusable(self, prog: NodeProgram) -> bool:
        return not (prog.node.kind == "llm" and any(self.plan.placement(op).pool in self.engines for op in prog.ops))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per pool: worker pools' counts and engine pools' (replicas, resends, restarts, engine version)."""
        out = self.backend.stats() if self.backend is not None else {}
        return {**out, **{n: e.stats() for n, e in self.engines.items()}}

    async def stop(self) -> None:
        engines, self.engines = self.engines, {}
        await asyncio.gather(*(e.drain(self.config.vllm.drain_s) for e in engines.values()))
        await asyncio.gather(*(e.stop() for e in engines.values()), return_exceptions=True)
        if self.backend is not None:
            await self.backend.stop()
            self.backend = None

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- ops ------------------------------------------------------------------------------------
    def _pool_for(self, op: str) -> tuple[str, str]:
        """(pool, device) for the next call of `op`: the router honours the plan's shares across pools."""
        place = self.plan.placement(op)
        shares = [PoolShare(place.pool, 1.0)]
        sent = self._sent.setdefault(op, {})
        pool = self.router.pick_pool(shares, sent)
        sent[pool] = sent.get(pool, 0) + 1
        return pool, place.device

    async def _op(self, req: RequestState, op: str, kind: str, payload: Any, retryable: bool) -> OpResult:
        assert self.backend is not None, "Runtime.start() first"
        pool, device = self._pool_for(op)
        streaming = req.on_event is not None
        if streaming:
            self.events.emit(req, op_start_event(op, pool, device))
        start_ns, t0 = time.time_ns(), time.perf_counter()
        engine = self.engines.get(pool) if kind in ENGINE_KINDS else None
        try:
            if engine is not None:
                res = await engine_call(engine, req, op, payload, self.config.timeout_for(op), self.events, kind)
            else:
                home = payload.get("kv_scope") if kind.startswith("llm.") and isinstance(payload, dict) else None
                res = await self.backend.submit(pool, OpCall(req.id, op, kind, payload, stream=streaming),
                                                self.config.timeout_for(op),
                                                self.events.worker_events(req, pool, device) if streaming else None,
                                                retryable=retryable, home=home)
        except ExecutionError as exc:
            self.events.failed(req, op, pool, device, start_ns, time.perf_counter() - t0, str(exc))
            raise
        lat = time.perf_counter() - t0
        self.events.record(req, op, pool, device, start_ns, lat, res, None)
        if streaming:
            self.events.emit(req, op_end_event(op, pool, device, lat, res))
        return res

    async def _run_segment(self, req: RequestState, seg: Segment, msg: dict[str, Any]) -> dict[str, Any]:
        """One round trip runs the segment's ops back to back in a worker of its pool. Each op still gets
        its sample, span and metrics from the worker's own timings; the queueing and transport of the
        round trip count toward the first op's latency."""
        assert self.backend is not None, "Runtime.start() first"
        streaming = req.on_event is not None
        if streaming:
            self.events.emit(req, op_start_event(seg.steps.ops[0], seg.pool, seg.device))
        call = OpCall(req.id, "+".join(seg.paths), "segment", {"key": seg.key, "programs": seg.blob, "msg": msg},
                      stream=streaming)
        start_ns, t0 = time.time_ns(), time.perf_counter()
        try:
            llm = any(self.setup.programs[p].node.kind == "llm" for p in seg.paths if p in self.setup.programs)
            res = await self.backend.submit(seg.pool, call, sum(seg.steps.timeouts_s),
                                            self.events.worker_events(req, seg.pool, seg.device) if streaming else None,
                                            steps=seg.steps, home=msg.get("kv_scope") if llm else None)
        except SegmentFailed as failed:  # an op inside failed: the ops before it still get their samples
            t_ns = self.events.record_fused(req, seg.pool, seg.device, call.op, failed.done, start_ns,
                                            time.perf_counter() - t0, None)
            exc = failed.cause
            op = exc.op or seg.steps.ops[len(failed.done)]
            self.events.failed(req, op, seg.pool, seg.device, t_ns, (time.time_ns() - t_ns) / 1e9, str(exc),
                               fused=call.op)
            raise exc from None
        except ExecutionError as exc:  # the round trip itself failed (timeout, worker lost, overload)
            op = exc.op if exc.op in seg.steps.ops else seg.steps.ops[0]
            self.events.failed(req, op, seg.pool, seg.device, start_ns, time.perf_counter() - t0, str(exc))
            raise
        self.events.record_fused(req, seg.pool, seg.device, call.op, res.value["done"], start_ns,
                                 time.perf_counter() - t0, res)
        return res.value["msg"]

    async def _exec_node(self, req: RequestState, path: str, node: Node, msg: dict[str, Any]) -> dict[str, Any]:
        if isinstance(node, SubagentNode):
            assert node.graph is not None
            return await self._run_graph(req, node.graph, path + "/", {**msg, "path": [*msg.get("path", []), path]})
        prog = self.setup.programs[path]
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

    # --- graph walk -----------------------------------------------------------------------------
    async def _run_graph(self, req: RequestState, graph: AgentGraph, prefix: str,
                         msg: dict[str, Any]) -> dict[str, Any]:
        g = self.setup.graphs[id(graph)]
        waiting: dict[str, dict[int, dict[str, Any]]] = {}
        finals: list[dict[str, Any]] = []

        async with asyncio.TaskGroup() as tg:
            async def visit(nid: str, m: dict[str, Any]) -> None:
                while True:  # follows the first successor in this task; others get their own
                    seg = self.segments.at(graph, prefix, nid)
                    req.steps += len(seg.paths) if seg else 1
                    if req.steps > self.config.max_steps_per_request:
                        raise ExecutionError(f"request ran more than {self.config.max_steps_per_request} node "
                                             "visits", op=prefix + nid,
                                             fix="raise max_steps_per_request or check loop bounds")
                    if seg is not None:
                        out, nid = await self._run_segment(req, seg, m), seg.last
                    else:
                        out = await self._exec_node(req, prefix + nid, g.nodes[nid], m)
                    nxt = next_edges(req, graph, g, prefix + nid, g.nodes[nid], out, self.config.routing)
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
                  on_event: Callable[[dict[str, Any]], None] | None = None,
                  max_new_tokens: int | None = None, tenant: str = "default") -> RequestResult:
        """Run one request end to end; never raises for op failures — the result says ok/error.

        `on_event`, when given, is called on the event loop, in order, with `{"type": "op_start", "op",
        "pool", "device"}` when an op is submitted to its pool, `{"type": "token", "op", "text", "index",
        "token_id"}` for each LLM token as the decode worker produces it, and `{"type": "op_end", "op",
        "pool", "device", "latency_s", "exec_s", "tokens", "worker", "ok"}` (or `"ok": False, "error"`).
        Memory nodes read and write `session`; without one the request has a history of its own, shared with
        no other request (a request id is not a session). `tenant` and the session scope the request's KV
        (runtime/kv_cache.py): a vLLM pool reuses it for this session's next calls, never another's."""
        rid = request_id or f"r{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        result = RequestResult(rid, text, ok=False, random_weights=self.setup.random_weights)
        req = RequestState(rid, random.Random(f"{self.config.seed}:{rid}"), result, on_event=on_event, tenant=tenant)
        t0 = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span(f"request {self.agent.name}") as span:
            span.set_attribute("tz.request", rid)
            req.span, req.span_ctx = span, self.telemetry.context_of(span)
            try:
                own = f"once:{uuid.uuid4().hex}"  # no session: a history of its own
                msg = new_message(text, session or own)
                req.scope = session or own
                msg["kv_scope"] = scope_key(tenant, req.scope)  # the built-in engine keeps KV per scope
                if max_new_tokens:  # the caller's cap (an OpenAI client's max_tokens), under the run config's
                    msg["max_new_tokens"] = max_new_tokens
                out = await self._run_graph(req, self.agent.graph, "", msg)
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
