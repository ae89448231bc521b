"""The OpenAI-compatible HTTP LLM client against terrazzo's own engine served on loopback by FastAPI."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from loopback import serve  # noqa: E402

from terrazzo.runtime.config import RunConfig  # noqa: E402
from terrazzo.runtime.executors.llm_engine import LlmEngine  # noqa: E402
from terrazzo.runtime.executors.openai_client import OpenAICompatClient, UpstreamError  # noqa: E402
from terrazzo.runtime.failures import ExecutionError  # noqa: E402
from terrazzo.runtime.orchestrator import Runtime  # noqa: E402
from terrazzo.runtime.pool_layout import load_plan  # noqa: E402
from terrazzo.runtime.run_command import make_tiny  # noqa: E402
from terrazzo.runtime.serve import create_app  # noqa: E402
from terrazzo.spec.spec_loader import agent_from_text  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tiny = tmp_path_factory.mktemp("tiny")
    make_tiny(tiny)
    with serve(create_app(tiny, "tiny")) as url:
        yield f"{url}/v1", tiny


def test_complete_and_stream_match_the_engine(server: tuple[str, Path]) -> None:
    url, tiny = server
    eng = LlmEngine(tiny, threads=1)
    client = OpenAICompatClient(url, timeout_s=30)
    gen = client.complete("where is my order?", model="tiny", max_tokens=12)
    assert list(gen.token_ids) == eng.reference_generate(eng.encode("where is my order?"), 12)
    assert "".join(client.stream("where is my order?", model="tiny", max_tokens=12)) == gen.text
    with pytest.raises(ExecutionError, match="HTTP 404"):
        client.complete("x", model="nope", max_tokens=2)


def test_async_client_streams_the_same_tokens(server: tuple[str, Path]) -> None:
    url, _ = server
    client = OpenAICompatClient(url, timeout_s=30)
    deltas: list[tuple[str, list[int]]] = []

    async def go():
        try:
            return await client.acomplete("where is my order?", model="tiny", max_tokens=12,
                                          on_delta=lambda t, i: deltas.append((t, i)))
        finally:
            await client.aclose()

    gen = asyncio.run(go())
    assert gen.token_ids == client.complete("where is my order?", model="tiny", max_tokens=12).token_ids
    assert [t for _, ids in deltas for t in ids] == list(gen.token_ids) and "".join(t for t, _ in deltas) == gen.text


def _breaking_app(fail_first: int, tokens_before_break: int):
    """An SSE completions server whose first `fail_first` streams break off after `tokens_before_break`
    chunks (the connection drops without the terminating chunk), as a crashing engine's would."""
    import json

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app, calls = FastAPI(), {"n": 0}

    @app.post("/v1/completions")
    async def completions(body: dict):
        calls["n"] += 1
        broken = calls["n"] <= fail_first

        async def gen():
            for i in range(4):
                if broken and i == tokens_before_break:
                    raise RuntimeError("engine died")
                yield "data: " + json.dumps({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                                             "choices": [{"index": 0, "text": f"t{i} ", "finish_reason": None}]})
                yield "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app, calls


def test_a_stream_broken_before_its_first_token_is_resent() -> None:
    app, calls = _breaking_app(fail_first=1, tokens_before_break=0)
    with serve(app) as url:
        gen = OpenAICompatClient(f"{url}/v1", timeout_s=10, retries=1).complete(
            "x", model="m", max_tokens=4, on_delta=lambda t, i: None)
    assert calls["n"] == 2 and gen.text == "t0 t1 t2 t3 " and len(gen.token_ids) == 4


def test_a_stream_broken_after_its_first_token_is_not_resent() -> None:
    app, calls = _breaking_app(fail_first=1, tokens_before_break=2)
    seen: list[str] = []
    with serve(app) as url, pytest.raises(UpstreamError, match="after 2 tokens") as info:
        OpenAICompatClient(f"{url}/v1", timeout_s=10, retries=3).complete(
            "x", model="m", max_tokens=4, on_delta=lambda t, i: seen.append(t))
    assert calls["n"] == 1 and seen == ["t0 ", "t1 "]
    assert info.value.tokens_seen == 2 and not info.value.safe_to_resend


def test_unreachable_endpoint_fails_after_retries() -> None:
    client = OpenAICompatClient(f"http://127.0.0.1:{_free_port()}/v1", timeout_s=1, retries=1)
    with pytest.raises(ExecutionError, match="failed after 2 tries"):
        client.complete("x", model="m", max_tokens=2)


def test_llm_node_over_http(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    agent = agent_from_text("name: h\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\n")
    config = RunConfig(state_dir=str(tmp_path), models={"llama-3-8b": {"endpoint": url, "served_name": "tiny"}})

    async def go():
        async with Runtime(agent, load_plan(None), config) as rt:
            return await rt.run("hello"), rt.notes

    res, notes = asyncio.run(go())
    assert res.ok, res.error
    assert [s.op for s in res.samples] == ["think.aggregated"] and res.samples[0].info["endpoint"] == url
    assert any(url in n for n in notes)
