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
from typing import Any, cast


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
                        text = cast(str, engine.tokenizer.decode(ids, skip_special_tokens=True))  # one sequence
                        # token_ids: an extra field (clients ignore it) so terrazzo's client keeps exact ids
                        data = chunk(kind, rid, text[len(prev):], None, chat) | {"token_ids": [t]}
                        yield f"data: {json.dumps(data)}\n\n"
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


def create_audio_app() -> Any:
    """A TEST audio server with OpenAI's audio routes, speaking the FSK test codec (terrazzo.runtime.fsk),
    not speech: `/v1/audio/speech` turns text into a WAV of tones and `/v1/audio/transcriptions` turns
    such a WAV back into its text. It lets the STT/TTS client code run against real HTTP endpoints."""
    from email.parser import BytesParser
    from email.policy import HTTP

    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, Response

    from terrazzo.runtime import fsk

    app = FastAPI(title=f"terrazzo test audio server — {fsk.LABEL}")

    @app.post("/v1/audio/speech")
    async def speech(body: dict[str, Any]):
        if body.get("response_format", "mp3") != "wav":
            raise HTTPException(400, f"this test server writes only response_format 'wav' ({fsk.LABEL})")
        if not isinstance(body.get("input"), str):
            raise HTTPException(400, "'input' (text) is required")
        return Response(fsk.encode(body["input"]), media_type="audio/wav", headers={"x-codec": fsk.LABEL})

    async def transcriptions(request: Any) -> Any:
        """Multipart form (file, model) → {"text"}; parsed with the standard library's MIME parser."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return JSONResponse({"detail": "send multipart/form-data with a 'file' field"}, 400)
        msg = BytesParser(policy=HTTP).parsebytes(f"content-type: {ctype}\r\n\r\n".encode() + await request.body())
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        if "file" not in parts:
            return JSONResponse({"detail": "the form has no 'file' field"}, 400)
        try:
            payload = parts["file"].get_payload(decode=True)
            text = fsk.decode(payload if isinstance(payload, bytes) else b"")
        except ValueError as exc:
            return JSONResponse({"detail": f"cannot decode the audio ({fsk.LABEL}): {exc}"}, 400)
        return JSONResponse({"text": text})

    app.router.add_route("/v1/audio/transcriptions", transcriptions, methods=["POST"])
    return app
