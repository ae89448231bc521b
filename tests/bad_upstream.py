"""An OpenAI-compatible completions server that misbehaves on purpose, chosen by the model name: what an
upstream endpoint may do, and what terrazzo must report as an upstream error rather than a success.

- `good`: a correct answer, `max_tokens` words long (finish_reason "length"), with usage;
- `no-done`: a stream that ends without `data: [DONE]` (a proxy or server cut it);
- `empty`: `{"choices": []}`;
- `garbage`: a body that is not JSON (also inside a stream);
- `huge`: a 40 MB body;
- `slow`: waits 30 s before answering (kill-the-endpoint drills use it too).
Started by the tests and the chaos benchmark on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

HUGE_BYTES = 40 * 1024 * 1024
MODE: dict[str, str] = {}  # {"force": mode}: answer every request in that mode, whatever model it names


def _completion(model: str, words: list[str], finish: str) -> dict[str, Any]:
    return {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": " ".join(words), "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}}


async def completions(request: Request) -> Response:
    body = await request.json()
    model, stream = MODE.get("force") or body.get("model", "good"), bool(body.get("stream"))
    n = int(body.get("max_tokens") or 16)
    words = [f"w{i}" for i in range(min(n, 64))]
    finish = "length" if n <= 64 else "stop"
    if model == "slow":
        await asyncio.sleep(30)
    if model == "empty":
        return JSONResponse({"id": "x", "object": "text_completion", "created": 0, "model": model, "choices": []})
    if model == "garbage" and not stream:
        return Response(b"<html>502 Bad Gateway</html>\x00\xff", media_type="application/json")
    if model == "huge" and not stream:
        pad = "x" * HUGE_BYTES
        return Response(json.dumps({**_completion(model, words, finish), "pad": pad}), media_type="application/json")
    if not stream:
        return JSONResponse(_completion(model, words, finish))

    async def events() -> AsyncIterator[bytes]:
        for i, w in enumerate(words):
            chunk = {"id": "x", "object": "text_completion", "created": 0, "model": model,
                     "choices": [{"index": 0, "text": (" " if i else "") + w,
                                  "finish_reason": finish if i == len(words) - 1 else None, "logprobs": None}]}
            if model == "garbage" and i == 1:
                yield b"data: {not json\n\n"
                continue
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if model == "huge":
                yield b": " + b"x" * (1 << 20) + b"\n\n"  # comment lines: 1 MiB each, 40 of them
        if model == "huge":
            for _ in range(40):
                yield b": " + b"x" * (1 << 20) + b"\n\n"
        if body.get("stream_options", {}).get("include_usage"):
            yield f"data: {json.dumps({'id': 'x', 'object': 'text_completion', 'created': 0, 'model': model, 'choices': [], 'usage': _completion(model, words, finish)['usage']})}\n\n".encode()  # noqa: E501
        if model != "no-done":
            yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in
                                                    ("good", "no-done", "empty", "garbage", "huge", "slow")]})


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                        Route("/v1/models", models), Route("/health", health)])
