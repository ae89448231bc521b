"""The one client for OpenAI-compatible LLM servers: vLLM pools terrazzo launches, and external
endpoints (SGLang, TGI, llama.cpp's server, a hosted API, terrazzo's own `runtime/serve.py`). It is the
official `openai` library, driven the same way from a worker process (sync) and from the orchestrator's
event loop (async), streamed or not.

Timeouts: `timeout_s` bounds the whole request and each wait for the next streamed chunk (httpx's read
timeout), `connect_timeout_s` the connection.

Retries, two layers, neither of which can duplicate text:
- the `openai` client's own (`max_retries`): connection errors, 408/409/429/5xx, with exponential
  backoff and Retry-After honoured, all before any response body is read;
- a stream that breaks before its first token is resent (`resends` times, default `retries`); once a
  token has reached the caller it is not, and the error says how many (`UpstreamError.tokens_seen`).
A multi-replica caller (runtime/engines/engine_pool.py) passes `resends=0` and resends to another
replica itself, by the same rule (`UpstreamError.safe_to_resend`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from terrazzo.runtime.executors.llm_engine import Generation
from terrazzo.runtime.executors.upstream_checks import (
    INVALID_ANSWER,
    async_http_client,
    check_reply,
    invalid_cause,
    sync_http_client,
)
from terrazzo.runtime.failures import ExecutionError

OnDelta = Callable[[str, list[int]], None]  # (text delta, its token ids: [] when the server sends none)

# What a call to an upstream can fail with: the library's errors, transport errors, and answers the checks refuse.
UPSTREAM_FAILURES: tuple[type[Exception], ...] = (openai.APIError, httpx.HTTPError, *INVALID_ANSWER)


class UpstreamError(ExecutionError):
    """The endpoint failed. `tokens_seen`: tokens already delivered to the caller (0: nothing was, so the
    request may go again); `status`: the HTTP status when the server answered with an error."""

    def __init__(self, message: str, *, fix: str = "", tokens_seen: int = 0, status: int | None = None,
                 op: str | None = None, pool: str | None = None) -> None:
        super().__init__(message, fix=fix, op=op, pool=pool)  # op/pool: the worker names where it failed
        self.tokens_seen, self.status = tokens_seen, status

    @property
    def safe_to_resend(self) -> bool:
        """True when resending cannot duplicate text: no token was delivered, and the server did not
        refuse the request itself (a 4xx other than 408/429 would be refused again)."""
        return self.tokens_seen == 0 and (self.status is None or self.status in (408, 429) or self.status >= 500)

    def __reduce__(self):  # keep the counts (and where it failed) across process boundaries
        return (_rebuild, (self.reason, self.fix, self.tokens_seen, self.status, self.op, self.pool))


def _rebuild(message: str, fix: str, tokens_seen: int, status: int | None, op: str | None = None,
             pool: str | None = None) -> UpstreamError:
    return UpstreamError(message, fix=fix, tokens_seen=tokens_seen, status=status, op=op, pool=pool)


@dataclass
class _Reply:
    """What came back, accumulated chunk by chunk."""

    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    first_token_s: float | None = None
    choices_seen: int = 0
    finish_reason: str | None = None

    def add(self, obj: Any, on_delta: OnDelta | None, t0: float) -> None:
        """One completion (or stream chunk): its text, token ids when the server sends them (vLLM with
        `return_token_ids`, per choice; terrazzo's server at the top level) and usage when present."""
        extra = getattr(obj, "model_extra", None) or {}
        usage = getattr(obj, "usage", None)
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens or self.prompt_tokens
            self.completion_tokens = usage.completion_tokens
        for choice in (obj.choices or [])[:1]:  # n=1: one choice (the usage-only final chunk has none)
            self.choices_seen += 1
            self.finish_reason = getattr(choice, "finish_reason", None) or self.finish_reason
            text = choice.text or ""
            cx = getattr(choice, "model_extra", None) or {}
            ids = list(cx.get("token_ids") or extra.get("token_ids") or ())
            if not text and not ids:
                continue
            if self.first_token_s is None:
                self.first_token_s = time.perf_counter() - t0
            self.texts.append(text)
            self.ids += ids
            self.chunks += 1
            if on_delta is not None:
                on_delta(text, ids)

    @property
    def tokens(self) -> int:
        return len(self.ids) or self.completion_tokens or self.chunks

    def generation(self, t0: float) -> Generation:
        n = self.tokens
        ids = tuple(self.ids) if len(self.ids) == n else tuple([-1] * n)
        check_reply(self.choices_seen, self.finish_reason)  # upstream_checks: an answer without a choice is none
        return Generation(token_ids=ids, text="".join(self.texts), prompt_tokens=self.prompt_tokens,
                          prefill_s=self.first_token_s or 0.0, decode_s=time.perf_counter() - t0,
                          finish_reason=self.finish_reason)


class OpenAICompatClient:
    """Completions against one base URL (`http://host:port/v1`). `token_ids`: ask for the generated
    token ids (vLLM's `return_token_ids`; leave off for servers that reject unknown fields)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 2,
                 connect_timeout_s: float = 5.0, token_ids: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.timeout_s, self.token_ids = retries, timeout_s, token_ids
        self._kw: dict[str, Any] = {"base_url": self.base_url, "api_key": api_key or "EMPTY", "max_retries": retries,
                                    "timeout": httpx.Timeout(timeout_s, connect=connect_timeout_s)}
        self._sync: openai.OpenAI | None = None
        self._async: openai.AsyncOpenAI | None = None

    # --- the request and its errors -------------------------------------------------------------
    def _body(self, prompt: str, model: str, max_tokens: int, stream: bool,
              extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        extra = {**({"return_token_ids": True} if self.token_ids else {}), **(extra_body or {})}
        if extra:
            body["extra_body"] = extra
        return body

    def _error(self, exc: Exception, tokens_seen: int) -> UpstreamError:
        exc = invalid_cause(exc)
        where = f"LLM endpoint {self.base_url}"
        if isinstance(exc, openai.APIStatusError):
            fix = ("check the model name and request (served_name in the run config)" if exc.status_code < 500
                   else "check the server's log; it failed the request")
            return UpstreamError(f"{where} answered HTTP {exc.status_code}: {str(exc.message)[:200]}", fix=fix,
                                 tokens_seen=tokens_seen, status=exc.status_code)
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            what = f"timed out after {self.timeout_s:g} s"
        else:
            what = f"{type(exc).__name__}: {exc}"
        if tokens_seen:
            return UpstreamError(f"{where} broke off the stream after {tokens_seen} tokens ({what}); not resent, "
                                 "those tokens were already delivered", tokens_seen=tokens_seen,
                                 fix="retry the request; see the server's log for why it stopped")
        return UpstreamError(f"{where} failed after {self.retries + 1} tries: {what}",
                             fix="check the server is up and reachable; raise op_timeout_s for slow models")

    def _resends(self, resends: int | None) -> int:
        return self.retries if resends is None else resends

    # --- sync (worker processes) ----------------------------------------------------------------
    def complete(self, prompt: str, *, model: str, max_tokens: int, on_delta: OnDelta | None = None,
                 resends: int | None = None, extra_body: dict[str, Any] | None = None) -> Generation:
        """One completion; streamed (SSE) when `on_delta` is given, which then gets each chunk as it arrives."""
        if self._sync is None:
            self._sync = openai.OpenAI(**self._kw, http_client=sync_http_client())
        for attempt in range(self._resends(resends) + 1):
            t0, reply = time.perf_counter(), _Reply()
            body = self._body(prompt, model, max_tokens, on_delta is not None, extra_body)
            try:
                if on_delta is None:
                    reply.add(self._sync.completions.create(**body), None, t0)
                else:
                    with self._sync.completions.create(**body) as chunks:
                        for chunk in chunks:
                            reply.add(chunk, on_delta, t0)
                return reply.generation(t0)
            except UPSTREAM_FAILURES as exc:
                err = self._error(exc, reply.tokens)
                if not err.safe_to_resend or attempt >= self._resends(resends):
                    raise err from None
        raise AssertionError("unreachable")

    def stream(self, prompt: str, *, model: str, max_tokens: int) -> Iterable[str]:
        """The text deltas of one streamed completion, collected (for tests and scripts)."""
        out: list[str] = []
        self.complete(prompt, model=model, max_tokens=max_tokens, on_delta=lambda text, _: out.append(text))
        return [t for t in out if t]

    # --- async (the orchestrator, for engine pools) ---------------------------------------------
    async def acomplete(self, prompt: str, *, model: str, max_tokens: int, on_delta: OnDelta | None = None,
                        resends: int | None = None, extra_body: dict[str, Any] | None = None) -> Generation:
        """`complete` on the event loop: many calls in flight share one connection pool."""
        if self._async is None:
            self._async = openai.AsyncOpenAI(**self._kw, http_client=async_http_client())
        for attempt in range(self._resends(resends) + 1):
            t0, reply = time.perf_counter(), _Reply()
            body = self._body(prompt, model, max_tokens, on_delta is not None, extra_body)
            try:
                if on_delta is None:
                    reply.add(await self._async.completions.create(**body), None, t0)
                else:
                    chunks = await self._async.completions.create(**body)
                    async with chunks:
                        async for chunk in chunks:
                            reply.add(chunk, on_delta, t0)
                return reply.generation(t0)
            except UPSTREAM_FAILURES as exc:
                err = self._error(exc, reply.tokens)
                if not err.safe_to_resend or attempt >= self._resends(resends):
                    raise err from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.close()
            self._async = None
