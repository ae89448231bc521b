"""`POST /v1/chat/completions` for agents whose graph is one LLM node: the agent's name is the model.
The conversation becomes the node's input; decoding is the runtime's (greedy, at most the run config's
max_new_tokens; max_tokens lowers it, down to the model or endpoint). finish_reason and usage are the
model's: an endpoint's own, or counted from the in-process engine's tokens. Tokens stream as the decode
worker produces them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from terrazzo.server.api_errors import ApiError
from terrazzo.server.schemas import ChatMessage, ChatRequest
from terrazzo.server.service import AgentService
from terrazzo.server.sse import frame, pump

RANDOM_FINGERPRINT = "terrazzo-random-weights"  # the answer came from a random-weight checkpoint


def conversation(messages: list[ChatMessage]) -> str:
    """A lone user message is the input as is; a longer conversation is rendered `role: text` per line."""
    def text(m: ChatMessage) -> str:
        if isinstance(m.content, list):
            return " ".join(p.text for p in m.content if p.text)
        return m.content or ""

    if len(messages) == 1 and messages[0].role == "user":
        return text(messages[0])
    return "\n".join(f"{m.role}: {text(m)}" for m in messages)


def chat_service(services: dict[str, AgentService], model: str) -> AgentService:
    svc = services.get(model)
    if svc is None:
        raise ApiError(404, f"the model '{model}' does not exist", type="invalid_request_error",
                       code="model_not_found", param="model", fix=f"use one of {sorted(services)} (GET /v1/models)")
    if svc.chat_node is None:
        kinds = ", ".join(f"{n.id} ({n.kind})" for n in svc.agent.graph.nodes)
        raise ApiError(400, f"agent '{model}' is not a single LLM node (its graph: {kinds}), so it has no chat "
                            "completions", type="invalid_request_error", code="not_a_single_llm", param="model",
                       fix=f"call POST /v1/agents/{model}/invoke")
    return svc


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _prompt_tokens(samples: list[Any]) -> int:
    """Prompt tokens the model saw: the prefill op's count when the plan splits the call, else what an
    OpenAI-compatible endpoint reported (the aggregated in-process op reports generated tokens only)."""
    return sum(s.tokens if s.op.endswith(".prefill") else int(s.info.get("prompt_tokens") or 0) for s in samples)


def _generated(samples: list[Any]) -> tuple[int, str | None]:
    """(tokens generated, the finish reason an endpoint gave) from the LLM op's sample."""
    gen = [s for s in samples if not s.op.endswith(".prefill")]
    return sum(s.tokens for s in gen), next((s.info["finish_reason"] for s in gen if s.info.get("finish_reason")),
                                            None)


def _finish(reason: str | None, n: int, cap: int) -> str:
    """The endpoint's own reason when it gave one ("stop", "length"); else "length" when the cap was reached."""
    return reason if reason in ("stop", "length") else "length" if n >= cap else "stop"


async def chat_completion(services: dict[str, AgentService], body: ChatRequest, keepalive_s: float,
                          tenant: str = "default") -> Any:
    svc = chat_service(services, body.model)
    wanted = body.max_completion_tokens or body.max_tokens
    cap = min(wanted or svc.config.max_new_tokens, svc.config.max_new_tokens)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    tokens: list[dict[str, Any]] = []
    queue: asyncio.Queue = asyncio.Queue()

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("type") == "token":
            (queue.put_nowait if body.stream else tokens.append)(ev)

    _, task = svc.begin(conversation(body.messages), on_event=on_event, tenant=tenant, max_new_tokens=cap)
    if not body.stream:
        result = await svc.answer(task)
        ids = [t for t in tokens if t.get("token_id") is not None]
        made, reason = _generated(result.samples)
        if len(ids) > cap:  # the runtime honours the cap; this holds should a model run past it anyway
            content, finish, n = "".join(t.get("text", "") for t in ids[:cap]), "length", cap
        else:
            content, n = result.text, made or len(ids)
            finish = _finish(reason, n, cap)
        return {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish, "logprobs": None}],
                "usage": _usage(_prompt_tokens(result.samples), n),
                "system_fingerprint": RANDOM_FINGERPRINT if result.random_weights else None}

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    async def events() -> AsyncIterator[str]:
        n, truncated = 0, False
        try:
            yield frame(None, chunk({"role": "assistant", "content": ""}, None))
            async for ev in pump(queue, task, keepalive_s):
                if ev is None:
                    yield ": keep-alive\n\n"
                    continue
                counts = ev.get("token_id") is not None or (ev.get("text") and not ev.get("flush"))
                if counts:  # a token (an endpoint's chunk may carry no id); not the held-back text's flush
                    if n >= cap:
                        truncated = True
                        task.cancel()  # enough tokens: stop the run (its admission slot frees as it ends)
                        break
                    n += 1
                if ev.get("text"):
                    yield frame(None, chunk({"content": ev["text"]}, None))
            prompt, reason = 0, None
            if not truncated:
                try:
                    samples = (await svc.answer(task)).samples
                except ApiError as err:
                    yield frame(None, err.body())
                    yield frame(None, "[DONE]")
                    return
                prompt, (made, reason) = _prompt_tokens(samples), _generated(samples)
                n = max(n, made)
            finish = "length" if truncated else _finish(reason, n, cap)
            yield frame(None, chunk({}, finish))
            if body.stream_options and body.stream_options.include_usage:
                yield frame(None, {"id": cid, "object": "chat.completion.chunk", "created": created,
                                   "model": body.model, "choices": [], "usage": _usage(prompt, n)})
            yield frame(None, "[DONE]")
        finally:
            if not task.done():
                task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
