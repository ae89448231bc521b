"""One served agent: its Runtime (pools), the plan it runs, admission, deadlines and the controller.
Every way in (JSON, SSE, chat) goes through `begin()`, so limits and accounting are the same for all."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terrazzo.errors import TerrazzoError
from terrazzo.plan_file import PLAN_SCHEMA
from terrazzo.runtime.config import load_config
from terrazzo.runtime.orchestrator import RequestResult, Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.server.admission import Admission
from terrazzo.server.api_errors import ApiError, ServeError
from terrazzo.server.controller import Controller, PlanState, Replanner, planner_inputs
from terrazzo.server.settings import ServeSettings

log = logging.getLogger("terrazzo.server")


def failure(result: RequestResult, retry_after: Callable[[], int]) -> ApiError:
    """The HTTP error for a request the runtime ran and failed, by the failure's exception type."""
    msg = result.error or "unknown error"
    rid = result.request_id
    kind = result.error_kind
    if kind == "Overloaded":
        after = retry_after()
        return ApiError(429, f"request {rid}: {msg}", type="rate_limit_error", code="pool_queue_full",
                        retry_after_s=after, headers={"Retry-After": str(after)}, fix=f"retry after {after} s")
    if kind == "OpTimeout":
        return ApiError(504, f"request {rid}: an op passed its deadline: {msg}", type="timeout_error",
                        code="op_deadline", fix="raise op_timeouts_s for that op in the run config")
    if kind == "WorkerLost":
        return ApiError(503, f"request {rid}: {msg}", type="worker_error", code="worker_lost",
                        fix="retry; see the server log for why the workers died")
    return ApiError(500, f"request {rid} failed: {msg}", type="agent_error", code="agent_failed",
                    fix="see the message: it names the op and the fix")


def result_json(agent: str, r: RequestResult) -> dict[str, Any]:
    return {"request_id": r.request_id, "agent": agent, "ok": r.ok, "text": r.text, "e2e_s": r.e2e_s,
            "path": r.path, "decisions": r.decisions,
            "ops": [{"op": s.op, "pool": s.pool, "device": s.device, "latency_s": s.latency_s, "exec_s": s.exec_s,
                     "tokens": s.tokens, "worker": s.worker} for s in r.samples]}


class AgentService:
    def __init__(self, agent_path: str | Path, plan_path: str | Path | None, config_path: str | Path | None,
                 backend: str, settings: ServeSettings, clock: Callable[[], float] = time.monotonic,
                 **config_overrides: Any) -> None:
        from terrazzo.spec.spec_loader import load_agent

        self.settings, self.clock = settings, clock
        self.agent = load_agent(agent_path)
        self.name = self.agent.name
        runtime_plan = load_plan(plan_path)
        if runtime_plan.agent and runtime_plan.agent != self.name:
            raise ServeError(f"plan '{plan_path}' is for agent '{runtime_plan.agent}', not '{self.name}'",
                             fix="plan this agent with `terrazzo plan -o` and pass that file to --plan")
        self.config = load_config(config_path, **config_overrides)
        self.runtime = Runtime(self.agent, runtime_plan, self.config, backend)
        doc = json.loads(Path(plan_path).read_text()) if plan_path else None
        plan_doc = doc if doc and doc.get("schema") == PLAN_SCHEMA else None

        c = settings.controller
        replanner, off = None, "the controller is disabled"
        if c.enabled:
            inputs, off = planner_inputs(Path(agent_path).resolve(), plan_doc, Path(plan_path) if plan_path else None,
                                         c, settings.path)
            if inputs is not None:
                try:
                    replanner = Replanner(inputs, c.verify)
                except TerrazzoError as exc:
                    off = f"the planner inputs do not load: {exc}"
            if replanner is None:
                log.warning("controller[%s]: re-planning off: %s", self.name, off)
        rate = (plan_doc or {}).get("rate_per_s") or (replanner.base_rate() if replanner else None)
        self.plan = PlanState(str(plan_path) if plan_path else "<none>", plan_doc, rate)
        self.admission = Admission(self.name, settings.limits.max_in_flight, self.config.queue_depth, c.window_s,
                                   (plan_doc or {}).get("e2e_latency_s"), clock)
        schedule = json.loads(settings.path(c.schedule).read_text()) if c.enabled and c.schedule else None
        self.controller = Controller(self.name, self.runtime, self.plan, c, replanner, off, clock,
                                     schedule_doc=schedule)
        self.state, self.error = "starting", ""
        self.draining = False
        self.in_flight_ids: set[str] = set()
        self._recent_ids: OrderedDict[str, None] = OrderedDict()  # a retried request id arrives once
        self.on_outcome: Callable[[str], None] = lambda outcome: None
        self.on_reject: Callable[[str], None] = lambda code: None
        nodes = self.agent.graph.nodes
        self.chat_node = nodes[0].id if len(nodes) == 1 and nodes[0].kind == "llm" else None

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.runtime.start()
        except Exception as exc:  # reported at /readyz and in the log; the server stays up to say so
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("agent %s failed to start: %s", self.name, self.error)
            raise
        self.state = "ready"
        self.controller.started()
        log.info("agent %s ready: %s", self.name, ", ".join(f"{n}×{v['workers']}" for n, v in self.load().items()))

    async def stop(self) -> None:
        await self.controller.stop()
        await self.runtime.stop()

    def load(self) -> dict[str, dict[str, int]]:
        return self.runtime.backend.load() if self.runtime.backend is not None else {}

    # --- requests -------------------------------------------------------------------------------
    def _refuse(self, err: ApiError) -> ApiError:
        self.on_reject(err.code or err.type)
        return err

    def begin(self, text: str, *, request_id: str | None = None, session: str | None = None,
              timeout_s: float | None = None, on_event: Callable[[dict[str, Any]], None] | None = None,
              ) -> tuple[str, asyncio.Task[RequestResult]]:
        """Admit one request and start it under its deadline, or raise the ApiError that refuses it.
        The admission slot is released when the task ends, however it ends (answered, failed, past its
        deadline, or its client gone), so a dropped connection can never leak capacity."""
        if self.draining:
            raise self._refuse(ApiError(503, "the server is shutting down and admits no new requests",
                                        type="unavailable_error", code="draining", fix="send it to another replica",
                                        headers={"Retry-After": str(self.admission.retry_after()),
                                                 "Connection": "close"}))
        if self.state != "ready":
            why = f"failed to start: {self.error}" if self.state == "failed" else "starting (pools warming up)"
            raise self._refuse(ApiError(503, f"agent '{self.name}' is {why}", type="unavailable_error",
                                        code=f"agent_{self.state}", fix="wait for GET /readyz to answer 200",
                                        headers={"Retry-After": "2"}))
        limits = self.settings.limits
        if len(text) > limits.max_input_chars:
            raise self._refuse(ApiError(422, f"input has {len(text)} characters, over the limit of "
                                             f"{limits.max_input_chars}", type="invalid_request_error",
                                        code="input_too_long", param="input",
                                        fix="shorten it (limits.max_input_chars in the serve config)"))
        rid = request_id or f"req-{uuid.uuid4().hex[:16]}"
        if rid in self.in_flight_ids:
            raise self._refuse(ApiError(409, f"request id '{rid}' is already in flight", type="conflict_error",
                                        code="duplicate_request_id", param="request_id",
                                        fix="wait for its answer; use a new id for a new request"))
        if request_id is None or request_id not in self._recent_ids:
            self.controller.arrived()
            if request_id is not None:
                self._recent_ids[request_id] = None
                if len(self._recent_ids) > 10_000:
                    self._recent_ids.popitem(last=False)
        load = self.load()
        try:
            self.admission.admit(load, set(load))
        except ApiError as err:
            raise self._refuse(err) from None
        self.in_flight_ids.add(rid)
        deadline_s = min(timeout_s or limits.request_timeout_s, limits.max_request_timeout_s)
        task = asyncio.create_task(self._run(text, rid, session, deadline_s, on_event))
        task.add_done_callback(lambda t: self._done(rid, t))
        return rid, task

    async def _run(self, text: str, rid: str, session: str | None, deadline_s: float,
                   on_event: Callable[[dict[str, Any]], None] | None) -> RequestResult:
        try:
            async with asyncio.timeout(deadline_s):
                return await self.runtime.run(text, request_id=rid, session=session, on_event=on_event)
        except TimeoutError:
            raise ApiError(504, f"request {rid} passed its deadline of {deadline_s:g} s and was cancelled",
                           type="timeout_error", code="request_deadline",
                           fix="send a larger timeout_s (up to limits.max_request_timeout_s), or retry when the "
                               "server is less busy") from None

    def _done(self, rid: str, task: asyncio.Task[RequestResult]) -> None:
        self.in_flight_ids.discard(rid)
        result = None if task.cancelled() or task.exception() is not None else task.result()
        if result is None:
            outcome = "cancelled" if task.cancelled() else getattr(task.exception(), "code", None) or "error"
        else:
            outcome = "ok" if result.ok else failure(result, lambda: 1).code or "error"
        self.admission.release(result.e2e_s if result is not None and result.ok else None,
                               [s.pool for s in result.samples] if result is not None else [])
        if result is not None:
            self.controller.observe(result.samples)
        self.on_outcome(outcome)

    async def answer(self, task: asyncio.Task[RequestResult]) -> RequestResult:
        """The finished request, or the ApiError its failure maps to."""
        result = await task
        if not result.ok:
            raise failure(result, lambda: self.admission.pool_retry_after(
                next((s.pool for s in result.samples if s.error), ""), self.config.queue_depth))
        return result

    # --- views ----------------------------------------------------------------------------------
    def pools_view(self) -> dict[str, Any]:
        backend = self.runtime.backend
        if backend is None:
            return {}
        load, stats = backend.load(), backend.stats()
        return {name: {"device": p.spec.device, "ops": list(p.spec.ops), **load[name],
                       "worker_pids": [w.pid for w in p.workers if w is not None and w.pid is not None],
                       "busy_pids": [w.pid for w, b in zip(p.workers, p.busy, strict=True) if w and b and w.pid],
                       "stats": {k: v for k, v in stats[name].items() if k not in ("workers", "device")}}
                for name, p in backend.pools.items()}

    def plan_view(self) -> dict[str, Any]:
        doc = self.plan.doc
        plan: dict[str, Any] = {"source": self.plan.source, "by": self.plan.by, "since": self.plan.since,
                                "rate_per_s": self.plan.rate_per_s}
        if doc is not None:
            plan |= {k: doc.get(k) for k in ("schema", "tco_usd_h", "e2e_latency_s", "deadline_s", "solver_status")}
            plan["ops"] = [{k: o.get(k) for k in ("name", "node", "kind", "device", "tp", "pp", "batch", "replicas",
                                                  "pool", "latency_s")} for o in doc.get("ops", [])]
        else:
            plan["placements"] = {op: {"pool": p.pool, "device": p.device, "replicas": p.replicas}
                                  for op, p in self.runtime.plan.ops.items()}
        return {"agent": self.name, "state": self.state, "backend": self.runtime.backend_name,
                "chat_completions": self.chat_node is not None, "plan": plan, "pools": self.pools_view(),
                "in_flight": self.admission.in_flight, "controller": self.controller.status()}
