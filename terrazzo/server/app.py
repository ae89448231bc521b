"""The FastAPI app: routes, error rendering, start-up in the background (so /readyz can say "starting"),
and the drain that graceful shutdown waits on."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from terrazzo.server.api_errors import ApiError, correlation_id, public_message
from terrazzo.server.auth import DEFAULT_TENANT, TokenMap, as_token_map
from terrazzo.server.guard import Guard
from terrazzo.server.metrics import HttpMetrics, ServerMetrics
from terrazzo.server.openai_compat import chat_completion
from terrazzo.server.schemas import (
    ChatCompletion,
    ChatRequest,
    ErrorResponse,
    Health,
    InvokeRequest,
    InvokeResponse,
    ModelList,
)
from terrazzo.server.service import AgentService, result_json
from terrazzo.server.settings import ServeSettings
from terrazzo.server.sse import frame, pump

log = logging.getLogger("terrazzo.server")

_ERRORS = {401: "missing or wrong bearer token", 404: "no such agent or model", 409: "request id already in flight",
           408: "the request body stalled past limits.read_timeout_s", 502: "the model server gave no valid answer",
           413: "body over limits.max_body_bytes", 422: "invalid request (the error lists each field's path)",
           429: "over capacity: in-flight cap or a full pool queue; see Retry-After",
           500: "the agent failed (the message names the op)", 503: "starting, draining, or its workers died",
           504: "past the request's or an op's deadline"}


def public_event(ev: dict[str, Any]) -> dict[str, Any]:
    """An event as a client may see it: an op's error without traces, paths or internal URLs."""
    return {**ev, "error": public_message(str(ev["error"]))} if ev.get("error") else ev


def tenant_of(request: Request) -> str:
    """The tenant the guard found for the request's bearer token."""
    return str(request.scope.get("state", {}).get("tenant", DEFAULT_TENANT))


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in codes}


class Lifecycle:
    """Draining: stop admitting (503), let in-flight requests finish (at most `grace_s`)."""

    def __init__(self, services: dict[str, AgentService], grace_s: float) -> None:
        self.services, self.grace_s, self.draining = services, grace_s, False

    def in_flight(self) -> int:
        return sum(s.admission.in_flight for s in self.services.values())

    async def drain(self) -> int:
        """Returns how many requests were still in flight when the grace period ended (0: all finished)."""
        self.draining = True
        for s in self.services.values():
            s.draining = True
        log.info("draining: %d requests in flight, up to %g s to finish", self.in_flight(), self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.in_flight()
        if left:  # past the grace: each gets its error (JSON envelope or SSE error event), then the server stops
            for s in self.services.values():
                s.abort_in_flight()
            for _ in range(100):  # bounded (5 s): the cancelled requests settle and their answers are written
                if not self.in_flight():
                    break
                await asyncio.sleep(0.05)
        return left


def create_app(services: list[AgentService], settings: ServeSettings, token: str | TokenMap | None,
               on_fatal: Callable[[str], None] | None = None, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """`token`: one token (tenant `default`), a token → tenant map, or None (auth off, loopback only)."""
    by_name = {s.name: s for s in services}
    lifecycle = Lifecycle(by_name, settings.limits.shutdown_grace_s)
    metrics = ServerMetrics(by_name)
    keepalive_s = settings.limits.sse_keepalive_s

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def started(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None and on_fatal is not None:
                on_fatal(f"an agent failed to start: {task.exception()}")

        starts = [asyncio.create_task(s.start()) for s in services]
        for t in starts:
            t.add_done_callback(started)
        if on_ready is not None:
            asyncio.gather(*starts).add_done_callback(lambda f: f.cancelled() or f.exception() or on_ready())
        try:
            yield
        finally:
            for t in starts:
                t.cancel()
            await asyncio.gather(*starts, return_exceptions=True)
            for s in services:
                await s.stop()
            log.info("pools stopped")

    app = FastAPI(title="terrazzo serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Agents planned by terrazzo, served: invoke (JSON or Server-Sent Events), "
                              "OpenAI-compatible chat completions for single-LLM agents, the running plan and "
                              "the controller's decisions, health, readiness and Prometheus metrics.")
    app.state.lifecycle, app.state.metrics, app.state.services = lifecycle, metrics, by_name
    bearer = [Security(HTTPBearer(auto_error=False, description="the token the server was started with"))]
    names = sorted(by_name)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        body = ApiError(err.status_code, str(err.detail), type=kind, code=f"http_{err.status_code}").body()
        return JSONResponse(body, err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        fields = [{"path": ".".join(str(x) for x in e["loc"]), "message": e["msg"], "type": e["type"]}
                  for e in err.errors()]
        summary = "; ".join(f"{f['path']}: {f['message']}" for f in fields[:5])
        body = ApiError(422, f"invalid request: {summary}", type="invalid_request_error", code="validation_failed",
                        param=fields[0]["path"] if fields else None, fields=fields,
                        fix="correct the fields listed (see GET /openapi.json)").body()
        return JSONResponse(body, 422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        cid = correlation_id()
        log.exception("unhandled error on %s %s [correlation_id %s]", request.method, request.url.path, cid)
        body = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error", code="internal",
                        correlation_id=cid, fix="the server log has the trace under correlation_id").body()
        return JSONResponse(body, 500)

    def service(name: str) -> AgentService:
        svc = by_name.get(name)
        if svc is None:
            raise ApiError(404, f"no agent '{name}'", type="not_found_error", code="agent_not_found", param="name",
                           fix=f"use one of {names}")
        return svc

    @app.post("/v1/agents/{name}/invoke", tags=["agents"], dependencies=bearer, response_model=InvokeResponse,
              responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                               "description": "the answer; or, when streaming, events: request, op_start, token, "
                                              "op_end, then result or error"},
                         **_errors(401, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504)})
    async def invoke(name: Annotated[str, PathParam(json_schema_extra={"enum": names})], body: InvokeRequest,
                     request: Request, accept: Annotated[str | None, Header()] = None) -> Any:
        """Run one request through the agent. JSON answer, or Server-Sent Events with `"stream": true` or
        `Accept: text/event-stream`: per-op progress and LLM tokens in the order they happen. A `request_id`
        whose request completed (within the retention window) is answered again, not run again."""
        svc = service(name)
        tenant = tenant_of(request)
        if not (body.stream or "text/event-stream" in (accept or "")):
            rid, task = svc.begin(body.input, request_id=body.request_id, session=body.session,
                                  timeout_s=body.timeout_s, tenant=tenant)
            result = await svc.answer(task)
            return JSONResponse(result_json(svc.name, result), headers={"X-Request-Id": rid})
        queue: asyncio.Queue = asyncio.Queue()
        rid, task = svc.begin(body.input, request_id=body.request_id, session=body.session, timeout_s=body.timeout_s,
                              on_event=queue.put_nowait, tenant=tenant)

        async def events() -> AsyncIterator[str]:
            try:
                yield frame("request", {"request_id": rid, "agent": svc.name})
                async for ev in pump(queue, task, keepalive_s):
                    yield ": keep-alive\n\n" if ev is None else \
                        frame(ev["type"], {**public_event(ev), "request_id": rid})
                try:
                    result = await svc.answer(task)
                except ApiError as err:
                    yield frame("error", {**err.body(), "status": err.status, "request_id": rid})
                    return
                yield frame("result", result_json(svc.name, result))
            finally:
                if not task.done() and body.request_id is None:
                    task.cancel()  # the client left: stop its request (one with an id finishes, for a resend)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Request-Id": rid, "Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=bearer, response_model=ChatCompletion,
              responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                               "description": "chat.completion, or chat.completion.chunk events with stream"},
                         400: {"model": ErrorResponse, "description": "the agent is not a single LLM node"},
                         **_errors(401, 404, 408, 413, 422, 429, 500, 502, 503, 504)})
    async def chat(body: ChatRequest, request: Request) -> Any:
        """OpenAI-compatible chat completions for agents that are a single LLM node (model = agent name)."""
        return await chat_completion(by_name, body, keepalive_s, tenant_of(request))

    @app.get("/v1/models", tags=["openai"], dependencies=bearer, response_model=ModelList,
             responses=_errors(401))
    async def models() -> dict[str, Any]:
        """The served agents, as OpenAI models (chat completions work for single-LLM agents)."""
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "terrazzo"}
                                           for n in names]}

    @app.get("/v1/plan", tags=["operations"], dependencies=bearer, responses=_errors(401, 404))
    async def plan(agent: Annotated[str | None, Query(json_schema_extra={"enum": names})] = None) -> dict[str, Any]:
        """The plan each agent runs, its pools now, and the controller's measurements and decisions."""
        chosen = [service(agent)] if agent else list(by_name.values())
        return {"agents": {s.name: s.plan_view() for s in chosen}}

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> dict[str, Any]:
        """The process answers (liveness)."""
        return {"status": "ok", "agents": {n: s.state for n, s in by_name.items()}}

    @app.get("/readyz", tags=["operations"], response_model=Health,
             responses={503: {"model": Health, "description": "starting, failed or draining"}})
    async def readyz() -> Any:
        """200 once every agent's pools are started and the model servers they call answer; 503 before that,
        while one of those servers is down (the body names its model), and while draining."""
        states = {n: s.state for n, s in by_name.items()}
        down = {n: await s.upstream.down() for n, s in by_name.items() if s.state == "ready"}
        for n, models in down.items():
            if models:
                states[n] = "upstream_down"
        status = "draining" if lifecycle.draining else "ready" if all(v == "ready" for v in states.values()) else \
            "failed" if "failed" in states.values() else "degraded" if "upstream_down" in states.values() else \
            "starting"
        body: dict[str, Any] = {"status": status, "agents": states}
        if any(down.values()):
            body["upstream_down"] = {n: m for n, m in down.items() if m}
        return JSONResponse(body, 200 if status == "ready" else 503)

    @app.get("/metrics", tags=["operations"], dependencies=bearer, response_class=PlainTextResponse,
             responses=_errors(401))
    async def prometheus() -> PlainTextResponse:
        """Prometheus text format: HTTP, admission, controller, pools and the runtimes' own metrics."""
        return PlainTextResponse(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The served agents are the only models: say so in the document (clients and fuzzers use it)."""
        if app.openapi_schema is None:
            doc = default_openapi()
            doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] = names
        return app.openapi_schema or doc

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(Guard, tokens=as_token_map(token), max_body_bytes=settings.limits.max_body_bytes,
                       read_timeout_s=settings.limits.read_timeout_s)
    app.add_middleware(HttpMetrics, metrics=metrics)  # outermost: counts what the guard refuses too
    return app
