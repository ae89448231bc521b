"""Upstream answers are checked (finding 4): an OpenAI-compatible endpoint that cuts its stream before
`[DONE]`, answers `{"choices": []}`, garbage or 40 MB gets a 502-class error with a clean message (no
internal URL), never a 200 with finish_reason "stop"; max_tokens, finish_reason and usage pass through;
/readyz reports the endpoint down. The endpoint is tests/bad_upstream.py on loopback, called by the
real runtime (a worker process with the openai client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
import bad_upstream  # noqa: E402
from loopback import serve  # noqa: E402
from serve_harness import ServerThread  # noqa: E402

from terrazzo.server.service import AgentService  # noqa: E402
from terrazzo.server.settings import ServeSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "upstream-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, str, object]]:
    tmp = tmp_path_factory.mktemp("upstream")
    up = serve(bad_upstream.app)
    url = up.__enter__()
    (tmp / "run.yaml").write_text(json.dumps({
        "state_dir": str(tmp), "warmup": False, "max_new_tokens": 16, "op_timeout_s": 20,
        "models": {"llama-3-70b": {"endpoint": f"{url}/v1", "served_name": "good"}}}))
    settings = ServeSettings(controller={"enabled": False})
    svc = AgentService(ROOT / "tests/data/serve/chat.yaml", None, tmp / "run.yaml", "local", settings)
    try:
        with ServerThread([svc], settings, TOKEN) as srv:
            yield srv, url, up
    finally:
        up.__exit__(None, None, None)


def _chat(srv: ServerThread, stream: bool, **extra: object) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    return httpx.post(f"{srv.url}/v1/chat/completions", headers=AUTH, json=body, timeout=120)


def _data(resp: httpx.Response) -> list[object]:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
            for line in resp.text.splitlines() if line.startswith("data: ")]


def test_max_tokens_finish_reason_and_usage_pass_through(stack: tuple) -> None:
    srv, _, _ = stack
    bad_upstream.MODE.clear()
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=TOKEN, max_retries=0)
    done = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert done.choices[0].message.content == "w0 w1" and done.choices[0].finish_reason == "length"
    assert (done.usage.completion_tokens, done.usage.prompt_tokens) == (2, 3)
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("mode", ["no-done", "empty", "garbage", "huge"])
def test_broken_answers_are_upstream_errors(stack: tuple, mode: str) -> None:
    srv, url, _ = stack
    bad_upstream.MODE["force"] = mode
    try:
        if mode != "no-done":  # a plain JSON answer needs no [DONE]
            r = _chat(srv, stream=False)
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert err["code"] == "upstream_failed" and err["correlation_id"]
            assert url not in r.text and "127.0.0.1" not in r.text
        r = _chat(srv, stream=True)
        events = _data(r)
        assert events[-1] == "[DONE]"
        assert not any(isinstance(e, dict) and any(c.get("finish_reason") == "stop" for c in e.get("choices", []))
                       for e in events)  # never a clean end
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        assert errors and errors[0]["error"]["code"] == "upstream_failed" and url not in r.text
        streamed = mode == "no-done"
        inv = httpx.post(f"{srv.url}/v1/agents/chat/invoke", headers=AUTH, json={"input": "hi", "stream": streamed},
                         timeout=120)
        assert url not in inv.text
        if streamed:
            assert "event: error" in inv.text and "event: result" not in inv.text and "upstream_failed" in inv.text
        else:
            assert inv.status_code == 502
    finally:
        bad_upstream.MODE.clear()


def test_endpoint_down_is_502_and_not_ready(stack: tuple) -> None:
    srv, url, up = stack
    assert httpx.get(f"{srv.url}/readyz").status_code == 200
    up.__exit__(None, None, None)  # the model server goes away
    r = _chat(srv, stream=False)
    assert r.status_code == 502 and url not in r.text and "127.0.0.1" not in r.text
    ready = httpx.get(f"{srv.url}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "degraded"
    assert ready.json()["upstream_down"] == {"chat": ["llama-3-70b"]} and url not in ready.text
