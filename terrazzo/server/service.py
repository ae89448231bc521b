"""One served agent: its Runtime (pools), the plan it runs, admission, deadlines and the controller.
Every way in (JSON, SSE, chat) goes through `begin()`, so limits and accounting are the same for all."""

from __future__ import annotations

import asyncio
import hashlib
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
from terrazzo.runtime.idempotency import IdempotencyStore
from terrazzo.runtime.orchestrator import OpSample, RequestResult, Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.server.admission import Admission
from terrazzo.server.api_errors import ApiError, ServeError, correlation_id, public_message
from terrazzo.server.controller import Controller, PlanState, Replanner, planner_inputs
from terrazzo.server.settings import ServeSettings
from terrazzo.server.upstream_health import UpstreamHealth, endpoints_of

log = logging.getLogger("terrazzo.server")


def failure(result: RequestResult, retry_after: Callable[[], int], *, logged: bool = False) -> ApiError:
    """The HTTP error for a request the runtime ran and failed, by the failure's exception type. The body
    carries no traceback, path or internal URL: the full error goes to the log under the correlation id
    the body returns."""
    cid = correlation_id()
    if logged:
        log.error("request %s failed [correlation_id %s]: %s", result.request_id, cid, result.error)
    err = _failure(result, retry_after, public_message(result.error or "unknown error"))
    err.extra["correlation_id"] = cid
    return err


def _failure(result: RequestResult, retry_after: Callable[[], int], msg: str) -> ApiError:
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
    if kind == "UpstreamError":
        return ApiError(502, f"request {rid}: the model server gave no valid answer: {msg}", type="upstream_error",
                        code="upstream_failed", fix="retry; if it persists, the model server is down or misbehaving")
    return ApiError(500, f"request {rid} failed: {msg}", type="agent_error", code="agent_failed",
                    fix="see the message: it names the op; the server log has the full error under correlation_id")


def replayed(record: dict[str, Any]) -> RequestResult:
    """A completed request's answer, rebuilt from the idempotency store (`result_json` inverted)."""
    samples = [OpSample(record["request_id"], o["op"], o["pool"], o["device"], o["latency_s"], o.get("exec_s"),
                        o.get("tokens", 0), o.get("worker", "")) for o in record.get("ops", [])]
    return RequestResult(record["request_id"], "", True, record["text"], e2e_s=record["e2e_s"],
                         path=record.get("path", []), decisions=record.get("decisions", []), samples=samples)


def result_json(agent: str, r: RequestResult) -> dict[str, Any]:
    return {"request_id": r.request_id, "agent": agent, "ok": r.ok, "text": r.text, "e2e_s": r.e2e_s,
            "path": r.path, "decisions": r.decisions, "random_weights": r.random_weights,
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
        self.in_flight_ids: set[tuple[str, str]] = set()          # (tenant, request id)
        self.tasks: dict[tuple[str, str], asyncio.Task[RequestResult]] = {}
        self.aborting = False                                     # shutdown past its grace: in-flight end (503)
        self.requests = IdempotencyStore.in_dir(self.config.path(self.config.state_dir),
                                                settings.idempotency.retention_s)
        self._fingerprints: dict[tuple[str, str], str] = {}
        self.upstream = UpstreamHealth(endpoints_of(self.agent, self.config))
        self._pruned_s = -1e18
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
        for note in self.runtime.notes:
            (log.warning if "RANDOM WEIGHTS" in note else log.info)("agent %s: %s", self.name, note)
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
              tenant: str = "default", max_new_tokens: int | None = None) -> tuple[str, asyncio.Task[RequestResult]]:
        """Admit one request and start it under its deadline, or raise the ApiError that refuses it.
        The admission slot is released when the task ends, however it ends (answered, failed, past its
        deadline, or its client gone), so a dropped connection can never leak capacity.

        The tenant owns its request ids and sessions: the runtime sees `tenant:id` and `tenant:session`, so
        one tenant can neither read another's memory nor collide with its ids. A request id whose request
        completed within the retention window is answered from the idempotency store, not run again."""
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
        fingerprint = hashlib.sha256(json.dumps([text, session]).encode()).hexdigest()[:32]
        if (tenant, rid) in self.in_flight_ids:
            running = self.tasks.get((tenant, rid))
            if running is not None and self._fingerprints.get((tenant, rid)) == fingerprint:
                return rid, running  # a resend while it runs: the same answer, when it comes
            raise self._refuse(ApiError(409, f"request id '{rid}' is already in flight", type="conflict_error",
                                        code="duplicate_request_id", param="request_id",
                                        fix="wait for its answer; use a new id for a new request"))
        if request_id is not None:
            replay = self._replay(tenant, rid, fingerprint)
            if replay is not None:
                return rid, replay
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
        key = (tenant, rid)
        self.in_flight_ids.add(key)
        if request_id is not None:
            self.requests.started(tenant, rid, fingerprint)
        deadline_s = min(timeout_s or limits.request_timeout_s, limits.max_request_timeout_s)
        task = asyncio.create_task(self._run(text, tenant, rid, session, deadline_s, on_event, max_new_tokens))
        self.tasks[key] = task
        self._fingerprints[key] = fingerprint
        task.add_done_callback(lambda t: self._done(key, t, remember=request_id is not None))
        return rid, task

    def _replay(self, tenant: str, rid: str, fingerprint: str) -> asyncio.Task[RequestResult] | None:
        now = self.clock()
        if now - self._pruned_s > 60:
            self._pruned_s = now
            self.requests.prune()
        record = self.requests.lookup(tenant, rid)
        if record is None or record.state != "done" or record.result is None:
            return None  # never seen, or cut off before it answered (server restart): run it (tools run once)
        if record.fingerprint != fingerprint:
            raise self._refuse(ApiError(422, f"request id '{rid}' was used for a different request", param="request_id",
                                        type="invalid_request_error", code="request_id_reused",
                                        fix="use a new request_id for a new request; resend the same body to get "
                                            "the first answer again"))
        self.on_outcome("replayed")

        async def answer() -> RequestResult:
            return replayed(record.result or {})

        return asyncio.create_task(answer())

    async def _run(self, text: str, tenant: str, rid: str, session: str | None, deadline_s: float,
                   on_event: Callable[[dict[str, Any]], None] | None, max_new_tokens: int | None) -> RequestResult:
        try:
            async with asyncio.timeout(deadline_s):
                result = await self.runtime.run(text, request_id=f"{tenant}:{rid}", on_event=on_event,
                                                max_new_tokens=max_new_tokens, tenant=tenant,
                                                session=f"{tenant}:{session}" if session else None)
        except TimeoutError:
            raise ApiError(504, f"request {rid} passed its deadline of {deadline_s:g} s and was cancelled",
                           type="timeout_error", code="request_deadline",
                           fix="send a larger timeout_s (up to limits.max_request_timeout_s), or retry when the "
                               "server is less busy") from None
        except asyncio.CancelledError:
            if not self.aborting:
                raise  # its client left
            raise ApiError(503, f"request {rid} was cut off: the server shut down before it finished",
                           type="unavailable_error", code="shutdown", headers={"Connection": "close"},
                           fix="send it again (to another replica); with the same request_id, a completed "
                               "request is answered from the idempotency store and tools never run twice") from None
        result.request_id = rid  # the client's id, not the runtime's tenant-qualified one
        return result

    def abort_in_flight(self) -> int:
        """Past the shutdown grace: end every request still running with a 503 (a JSON error, or an SSE
        error event), so no client sees a cut connection. Returns how many were running."""
        self.aborting = True
        running = [t for t in self.tasks.values() if not t.done()]
        for t in running:
            t.cancel()
        return len(running)

    def _done(self, key: tuple[str, str], task: asyncio.Task[RequestResult], remember: bool) -> None:
        self.in_flight_ids.discard(key)
        self.tasks.pop(key, None)
        self._fingerprints.pop(key, None)
        result = None if task.cancelled() or task.exception() is not None else task.result()
        if remember:
            if result is not None and result.ok:
                self.requests.finished(*key, result_json(self.name, result))
            else:
                self.requests.forget(*key)
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
        """The finished request, or the ApiError its failure maps to. Shielded: a caller that goes away does
        not cancel a request another caller (a resend of its id) may be waiting for."""
        result = await asyncio.shield(task)
        if not result.ok:
            raise failure(result, lambda: self.admission.pool_retry_after(
                next((s.pool for s in result.samples if s.error), ""), self.config.queue_depth), logged=True)
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
