"""A minimal OpenAI-compatible server around terrazzo's own engine (completions and chat completions,
streaming or not), so the HTTP LLM client can be tested against a real server on loopback, and a tiny
checkpoint can stand in for vLLM/SGLang/TGI in demos. One request at a time per engine (a lock)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def create_app(checkpoint: str | Path, served_name: str = "terrazzo-tiny", max_prompt_tokens: int = 1024) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    from terrazzo.runtime.executors.llm_engine import LlmEngine

    engine = LlmEngine(checkpoint, threads=1, max_prompt_tokens=max_prompt_tokens)
    lock = threading.Lock()
    app = FastAPI(title="terrazzo engine (OpenAI-compatible)")

    def prompt_of(body: dict[str, Any], chat: bool) -> str:
        if not chat:
            return str(body.get("prompt", ""))
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in body.get("messages", [])) + \
            "\nassistant:"

    def tokens(body: dict[str, Any], chat: bool):  # -> (iterator of (id, text delta), prompt_len)
        if body.get("model") not in (None, served_name):
            raise HTTPException(404, f"model '{body.get('model')}' is not served here; use '{served_name}'")
        ids = engine.encode(prompt_of(body, chat))
        kv = engine.prefill(ids, int(body.get("max_tokens") or 16))
        return engine.iter_decode(kv), len(ids)

    def chunk(kind: str, rid: str, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
        choice = ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat
                  else {"index": 0, "text": text, "finish_reason": finish})
        return {"id": rid, "object": kind, "created": int(time.time()), "model": served_name, "choices": [choice]}

    async def handle(body: dict[str, Any], chat: bool):
        rid = f"cmpl-{uuid.uuid4().hex[:12]}"
        kind = "chat.completion.chunk" if chat else "text_completion"
        if body.get("stream"):
            def gen():
                with lock:
                    it, _ = tokens(body, chat)
                    prev = ""
                    ids: list[int] = []
                    for t in it:
                        ids.append(t)
                        text = engine.tokenizer.decode(ids, skip_special_tokens=True)
                        yield f"data: {json.dumps(chunk(kind, rid, text[len(prev):], None, chat))}\n\n"
                        prev = text
                    yield f"data: {json.dumps(chunk(kind, rid, '', 'length', chat))}\n\n"
                    yield "data: [DONE]\n\n"
            return StreamingResponse(gen(), media_type="text/event-stream")

        def run() -> tuple[list[int], int]:
            with lock:
                it, n_prompt = tokens(body, chat)
                return list(it), n_prompt

        ids, n_prompt = await asyncio.to_thread(run)
        text = engine.tokenizer.decode(ids, skip_special_tokens=True)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "finish_reason": "length"})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": served_name, "choices": [choice],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(ids),
                          "total_tokens": n_prompt + len(ids)}, "token_ids": ids}

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]):
        return await handle(body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict[str, Any]):
        return await handle(body, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "terrazzo"}]}

    return app
