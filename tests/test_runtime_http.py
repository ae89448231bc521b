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
from terrazzo.runtime.executors.llm_http import OpenAIClient  # noqa: E402
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
    client = OpenAIClient(url, timeout_s=30)
    gen = client.complete("where is my order?", model="tiny", max_tokens=12)
    assert list(gen.token_ids) == eng.reference_generate(eng.encode("where is my order?"), 12)
    assert "".join(client.stream("where is my order?", model="tiny", max_tokens=12)) == gen.text
    with pytest.raises(ExecutionError, match="HTTP 404"):
        client.complete("x", model="nope", max_tokens=2)


def test_unreachable_endpoint_fails_after_retries() -> None:
    client = OpenAIClient(f"http://127.0.0.1:{_free_port()}/v1", timeout_s=1, retries=1)
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
