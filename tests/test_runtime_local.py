"""End to end on the local backend: the voice and RAG example agents with real executors, branches and
bounded loops decided on real outputs, HTTP tools against a loopback server, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.executors.text import ConditionUnknown, evaluate, parse_tool_call
from terrazzo.runtime.executors.tools import call_http
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.orchestrator import RequestResult, Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.runtime.run_command import run_command
from terrazzo.spec.spec_loader import agent_from_text

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def test_voice_agent_end_to_end_disaggregated(state: Path) -> None:
    rep = run_command(EX / "agents/voice-agent.yaml", EX / "runtime/voice-agent.disaggregated.plan.json",
                      ["what is the weather in paris", "tell me a joke"], "local", EX / "runtime/voice.yaml",
                      state_dir=str(state))
    assert rep.ok, [r.error for r in rep.requests]
    ops = {r["op"]: r for r in rep.ops()}
    assert {"asr", "think.prefill", "think.decode", "speak"} <= set(ops)
    assert ops["think.prefill"]["plan_ms"] is not None and ops["think.prefill"]["mean_ms"] > 0
    assert ops["think.prefill"]["pool"] != ops["think.decode"]["pool"]
    for r in rep.requests:
        assert r.output["stt_mode"].startswith("text pass-through") and r.output["tts_mode"].startswith("text pass")
        assert r.path[0] == "asr" and r.path[-1] == "speak"
        assert any(d["node"] == "route" for d in r.decisions)
    assert any("RANDOM WEIGHTS" in n for n in rep.notes)
    assert "plan ms" in str(rep.table().columns[-1].header)
    js = rep.to_json()
    assert js["schema"] == "terrazzo.run/v1" and json.dumps(js)


def test_rag_agent_end_to_end_with_memory(state: Path) -> None:
    rep = run_command(EX / "agents/rag-support.yaml", EX / "plans/rag-support.json",
                      ["how do I return an item?", "is shipping free?"], "local", EX / "runtime/rag.yaml",
                      state_dir=str(state))
    assert rep.ok, [r.error for r in rep.requests]
    first = rep.requests[0].output
    assert any("return" in c.lower() for c in first["context"])  # MiniLM + FAISS found the returns passage
    assert first["hits"][0]["source"].startswith("help-centre.md")
    assert {"retrieve.embed", "retrieve.search", "answer.prefill", "answer.decode", "remember"} <= {
        r["op"] for r in rep.ops()}
    assert (state / "index/retrieve/index.faiss").exists()  # persisted


LOOP_AGENT = """
name: loop-agent
nodes:
  - {id: think, kind: compute, function: "drills:tool_caller", cpu_s: 1 ms}
  - {id: route, kind: branch}
  - {id: search, kind: tool, protocol: python, function: "drills:echo"}
  - {id: again, kind: loop, body: think, bound: 3}
  - {id: done, kind: compute, cpu_s: 1 ms}
edges:
  - {from: think, to: route}
  - {from: route, to: search, probability: 0.3, condition: "tool_call == 'search'"}
  - {from: route, to: done, probability: 0.7}
  - {from: search, to: again}
  - {from: again, to: think}
  - {from: again, to: done}
"""


def _run(agent_text: str, config: RunConfig, inputs: list[str], plan: Path | None = None) -> tuple[list, Runtime]:
    async def go() -> tuple[list, Runtime]:
        async with Runtime(agent_from_text(agent_text), load_plan(plan), config) as rt:
            return list(await asyncio.gather(*(rt.run(t, request_id=f"q{i}") for i, t in enumerate(inputs)))), rt
    return asyncio.run(go())


def test_branch_and_loop_follow_real_outputs(tmp_path: Path) -> None:
    results, rt = _run(LOOP_AGENT, RunConfig(state_dir=str(tmp_path)), ["hi"])
    r = results[0]
    assert r.ok, r.error
    assert r.path == ["think", "route", "search", "again", "think", "route", "search", "again", "think", "route",
                      "done"]
    assert r.output["tool_results"] == ["search: echo: weather", "search: echo: weather"]
    assert [d["how"] for d in r.decisions if d["node"] == "route"][:2] == ["condition \"tool_call == 'search'\""] * 2
    spans = rt.telemetry.finished_spans()
    assert {s.attributes["tz.op"] for s in spans if "tz.op" in s.attributes} >= {"think", "search.compute"}
    assert all(s.attributes["tz.pool"] == "cpu-default" for s in spans if "tz.op" in s.attributes)
    metrics = rt.telemetry.metrics_text()
    assert 'tz_op_latency_seconds_count{device="cpu",op="search.compute",pool="cpu-default"} 2.0' in metrics
    assert "tz_pool_queue_depth" in metrics


def test_loop_bound_caps_repeats_when_sampling(tmp_path: Path) -> None:
    always = LOOP_AGENT.replace("probability: 0.3, condition: \"tool_call == 'search'\"", "probability: 1.0").replace(
        "probability: 0.7", "probability: 0.0")
    results, _ = _run(always, RunConfig(state_dir=str(tmp_path), routing="sample"), ["x", "y"])
    for r in results:
        # the first pass plus `bound` = 3 repeats through the loop's body edge, then out by its other edge
        assert r.ok and r.path.count("think") == 4 and r.path.count("search") == 4 and r.path[-1] == "done"
        assert any("bound 3 reached" in d["how"] for d in r.decisions)


def test_conditions_and_tool_call_markers() -> None:
    assert parse_tool_call('x <tool_call>{"name": "search", "arguments": {"q": 1}}</tool_call>') == ("search", {"q": 1})
    assert parse_tool_call("<tool_call>order_status</tool_call>") == ("order_status", {})
    assert parse_tool_call("no call") == (None, {})
    assert evaluate("tool_call == 'search'", {"tool_call": "search"})
    assert evaluate("'refund' in text and not tool_call", {"text": "a refund", "tool_call": None})
    with pytest.raises(ConditionUnknown):
        evaluate("weather > 3", {})
    with pytest.raises(ConditionUnknown):
        evaluate("__import__('os')", {})


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def log_message(self, *a: object) -> None:
        pass

    def _reply(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):
            self.wfile.write(payload)

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(self.path)
        self.hits[url.path] = self.hits.get(url.path, 0) + 1
        if url.path == "/slowget":
            import time

            time.sleep(0.8)
        q = parse_qs(url.query)
        self._reply(200, json.dumps({"got": q["query"][0], "arguments": json.loads(q["arguments"][0])}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/broken":
            self._reply(500, b"{}")
            return
        if self.path == "/flaky" and n < 3:
            self.send_response(503)
            self.send_header("retry-after", "0")
            self.end_headers()
            return
        if self.path == "/slow":
            import time

            time.sleep(2)
        payload = b"x" * 5000 if self.path == "/big" else json.dumps({"you_asked": body["query"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the timeout test)
            self.wfile.write(payload)


@pytest.fixture(scope="module")
def loopback() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_tool_retries_timeouts_and_size_limit(loopback: str) -> None:
    kw = {"timeout_s": 1.0, "retries": 2, "max_response_bytes": 1024}
    assert json.loads(call_http(f"{loopback}/ok", "hi", {}, **kw)) == {"you_asked": "hi"}
    assert "you_asked" in call_http(f"{loopback}/flaky", "hi", {}, **kw)  # two 503s, then success
    with pytest.raises(ExecutionError, match="exceeds 1024 bytes"):
        call_http(f"{loopback}/big", "hi", {}, **kw)
    with pytest.raises(ExecutionError, match="timed out"):
        call_http(f"{loopback}/slow", "hi", {}, timeout_s=0.3, retries=0, max_response_bytes=1024)


def test_http_tool_node_in_an_agent(loopback: str, tmp_path: Path) -> None:
    agent = f"""
name: http-agent
nodes:
  - {{id: lookup, kind: tool, protocol: http, endpoint: "{loopback}/ok"}}
"""
    results, _ = _run(agent, RunConfig(state_dir=str(tmp_path)), ["order 42"])
    assert results[0].ok and '"you_asked": "order 42"' in results[0].output["tool_results"][0]


def test_http_tool_get_and_retry_policy(loopback: str) -> None:
    """GET sends URL parameters. A 500 is retried only for an idempotent tool: a POST that may have acted
    is not sent twice."""
    kw = {"timeout_s": 1.0, "retries": 2, "max_response_bytes": 1024}
    assert json.loads(call_http(f"{loopback}/get", "hi", {"n": 2}, method="GET", **kw)) == {
        "got": "hi", "arguments": {"n": 2}}
    with pytest.raises(ExecutionError, match="not sent again because the tool is not declared idempotent"):
        call_http(f"{loopback}/broken", "hi", {}, **kw)
    assert _Handler.hits["/broken"] == 1
    with pytest.raises(ExecutionError, match="failed after 3 tries: HTTP 500"):
        call_http(f"{loopback}/broken", "hi", {}, idempotent=True, **kw)
    assert _Handler.hits["/broken"] == 4


def test_http_get_tool_is_idempotent_by_default_and_rerun_after_a_crash(loopback: str, tmp_path: Path) -> None:
    agent = agent_from_text(f"name: g\nnodes:\n  - {{id: look, kind: tool, protocol: http, endpoint: '{loopback}'}}\n")
    config = RunConfig(state_dir=str(tmp_path), max_workers_per_pool=2, min_workers_per_pool=2,
                       tools={"look": {"endpoint": f"{loopback}/slowget", "method": "GET"}})

    async def go() -> tuple[RequestResult, dict]:
        async with Runtime(agent, load_plan(None), config) as rt:
            task = asyncio.create_task(rt.run("order 7"))
            for _ in range(2000):
                busy = rt.backend.busy_index("cpu-default")
                if busy is not None and _Handler.hits.get("/slowget"):  # the GET is in flight
                    rt.backend.kill_worker("cpu-default", busy)
                    break
                await asyncio.sleep(0.005)
            return await task, rt.backend.stats()["cpu-default"]

    res, stats = asyncio.run(go())
    assert res.ok, res.error
    assert json.loads(res.output["tool_results"][0].removeprefix("look: "))["got"] == "order 7"
    assert stats["retried"] == 1 and _Handler.hits["/slowget"] == 2  # sent twice: safe, it is a GET


SUB_CHILD = """
name: child
nodes:
  - {id: lookup, kind: tool, protocol: python, function: "drills:echo"}
"""
SUB_PARENT = """
name: parent
nodes:
  - {id: intake, kind: compute, cpu_s: 1 ms}
  - id: research
    kind: subagent
    graph:
      nodes:
        - {id: search, kind: tool, protocol: python, function: "drills:echo"}
        - {id: sum, kind: compute, function: "drills:noop", cpu_s: 1 ms}
      edges:
        - {from: search, to: sum}
  - {id: helper, kind: subagent, agent: child.yaml}
  - {id: done, kind: compute, cpu_s: 1 ms}
edges:
  - {from: intake, to: research}
  - {from: research, to: helper}
  - {from: helper, to: done}
"""


def test_subagents_inline_and_from_file_run_their_own_graphs(tmp_path: Path) -> None:
    """An inline sub-agent (its ops placed on their own pool, fused there into one round trip) and one
    loaded from a file (its tool remapped in the run config by its prefixed node path)."""
    from terrazzo.spec.spec_loader import load_agent

    (tmp_path / "child.yaml").write_text(SUB_CHILD)
    (tmp_path / "parent.yaml").write_text(SUB_PARENT)
    place = {"device": "epyc-9654", "tp": 1, "pp": 1, "batch": 1, "replicas": 1, "pool": "research"}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": dict.fromkeys(
        ["research/search.lookup", "research/search.compute", "research/sum"], place)}))
    config = RunConfig(state_dir=str(tmp_path), tools={"helper/lookup": {
        "function": "drills:slow_echo"}})

    async def go() -> tuple[list[RequestResult], dict]:
        async with Runtime(load_agent(tmp_path / "parent.yaml"), load_plan(plan), config) as rt:
            return list(await asyncio.gather(rt.run("sleep:0 hi"), rt.run("sleep:0 yo"))), rt.backend.stats()

    results, stats = asyncio.run(go())
    for r, word in zip(results, ["hi", "yo"], strict=True):
        assert r.ok, r.error
        assert r.path == ["intake", "research", "research/search", "research/sum", "helper", "helper/lookup", "done"]
        assert r.output["tool_results"] == [f"search: echo: sleep:0 {word}", f"lookup: echo: {word}"]
        assert [(s.op, s.pool) for s in r.samples] == [
            ("intake", "cpu-default"), ("research/search.lookup", "research"), ("research/search.compute", "research"),
            ("research/sum", "research"), ("helper/lookup.lookup", "cpu-default"),
            ("helper/lookup.compute", "cpu-default"), ("done", "cpu-default")]
    assert stats["research"]["submitted"] == 2  # the sub-agent's three ops: one round trip per request


def test_a_current_index_is_reused_without_loading_the_model(tmp_path):
    """The FAISS index is rebuilt only when documents or model change; a current one loads no model."""
    from terrazzo.runtime.executors.vector import Embedder, build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Returns are free within 30 days.\n\nShipping takes two days.")
    loads: list[str] = []

    def counting(model_dir: str) -> Embedder:
        loads.append(model_dir)
        return Embedder(model_dir)

    model = RunConfig().embed_path()
    first = build_index(docs, tmp_path / "idx", model, counting)
    again = build_index(docs, tmp_path / "idx", model, counting)
    assert first == again and first["vectors"] == 2 and len(loads) == 1
    (docs / "b.txt").write_text("Gift cards never expire.")
    assert build_index(docs, tmp_path / "idx", model, counting)["vectors"] == 3 and len(loads) == 2
