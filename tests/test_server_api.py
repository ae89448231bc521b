"""`terrazzo serve` through a real HTTP client on loopback: one uvicorn server (in a thread) serving the RAG
example (MiniLM + FAISS + tiny random-weight Llama; advisory controller), a single-LLM chat agent planned
by the real planner for 5 req/s (active controller, short dwell), and two tool agents that hold requests in
flight on demand. Auth, validation, body limit, admission (429), deadlines (504), SSE order, the OpenAI
client, the controller re-planning and resizing, metrics, and the OpenAPI document under schemathesis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_harness import ServerThread, sse_events  # noqa: E402

from terrazzo.runtime.run_command import make_tiny  # noqa: E402
from terrazzo.server.controller import PlannerInputs, Replanner  # noqa: E402
from terrazzo.server.service import AgentService  # noqa: E402
from terrazzo.server.settings import ControllerSettings, LimitSettings, ServeSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "serve"
TOKEN = "serve-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024


CHAT_INPUTS = PlannerInputs(DATA / "chat.yaml", ROOT / "examples/workloads/steady-5rps.yaml",
                            ROOT / "examples/slas/interactive.yaml", ROOT / "examples/clusters/hetero.yaml")


@pytest.fixture(scope="module")
def chat_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The chat agent planned for 5 req/s by the real planner (as `terrazzo plan -o` would write it)."""
    doc = Replanner(CHAT_INPUTS, verify=False).plan_at(5.0)
    path = tmp_path_factory.mktemp("plan") / "chat.plan.json"
    path.write_text(json.dumps(doc))
    return path, doc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chat_plan: tuple[Path, dict]) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("serve")
    make_tiny(tmp / "tiny")
    limits = LimitSettings(max_in_flight=3, max_body_bytes=MAX_BODY)
    settings = ServeSettings(limits=limits, controller=ControllerSettings(
        advisory=True, interval_s=0.5, window_s=10, min_window_s=1, dwell_s=5, persist_s=1))
    active = ServeSettings(limits=limits, controller=ControllerSettings(  # reacts to the idle start only:
        interval_s=0.2, window_s=3, min_window_s=1, dwell_s=2, persist_s=0.5, band_up=100))  # bursts: in band
    own = {"state_dir": str(tmp), "default_checkpoint": str(tmp / "tiny")}
    services = [
        AgentService(ROOT / "examples/agents/rag-support.yaml", ROOT / "examples/runtime/rag-support.plan.json",
                     ROOT / "examples/runtime/rag.yaml", "local", settings),
        AgentService(CHAT_INPUTS.agent, chat_plan[0], None, "local", active, max_workers_per_pool=2, warmup=False,
                     **own),  # workers load the model on first use: one of the two is retired before that
        AgentService(DATA / "slow.yaml", None, None, "local", settings, queue_depth=8, **own),
        AgentService(DATA / "narrow.yaml", None, None, "local", settings, queue_depth=1, **own),
    ]
    with ServerThread(services, settings, TOKEN) as srv:
        yield srv


def _client(server: ServerThread, **kw: object) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, **kw)



def _open_stream(stack: ExitStack, c: httpx.Client, agent: str, text: str) -> Iterator[tuple[str, dict]]:
    """Start a streamed request and read until its op is submitted to the pool (so it holds its place).
    Keep the returned iterator: dropping it closes the response, and the server cancels a request whose
    client has gone."""
    resp = stack.enter_context(c.stream("POST", f"/v1/agents/{agent}/invoke", headers=AUTH,
                                        json={"input": text, "stream": True}))
    assert resp.status_code == 200
    events = sse_events(resp.iter_lines())
    for name, _ in events:
        if name == "op_start":
            return events
    raise AssertionError("stream ended before its op started")


def test_auth(server: ServerThread) -> None:
    with _client(server) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="terrazzo"'
        assert r.json()["error"]["code"] == "missing_token"
        r = c.get("/v1/models", headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        r = c.post("/v1/agents/rag-support/invoke", headers={"Authorization": "Basic abc"}, content=b"{not json")
        assert r.status_code == 401  # auth is checked before the body is read or parsed
        r = c.get("/v1/models", headers=AUTH)
        assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {"rag-support", "chat", "slow", "narrow"}
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").json()["status"] == "ready"


def test_validation_names_the_field(server: ServerThread) -> None:
    with _client(server, headers=AUTH) as c:
        r = c.post("/v1/agents/rag-support/invoke", json={"input": 5, "colour": "red"})
        assert r.status_code == 422
        paths = {f["path"] for f in r.json()["error"]["fields"]}
        assert paths == {"body.input", "body.colour"}
        r = c.post("/v1/agents/rag-support/invoke", json={"input": "hi", "timeout_s": 0})
        assert r.status_code == 422 and r.json()["error"]["param"] == "body.timeout_s"
        r = c.post("/v1/agents/nobody/invoke", json={"input": "hi"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "agent_not_found"


def test_oversize_body_is_refused_while_reading(server: ServerThread) -> None:
    big = json.dumps({"input": "a" * (MAX_BODY + 10)}).encode()
    with _client(server, headers=AUTH) as c:
        r = c.post("/v1/agents/rag-support/invoke", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        r = c.post("/v1/agents/rag-support/invoke", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["error"]["message"]


def test_invoke_json(server: ServerThread) -> None:
    with _client(server, headers=AUTH) as c:
        r = c.post("/v1/agents/rag-support/invoke", json={"input": "how do I return an item?", "request_id": "rq-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] and body["request_id"] == "rq-1" == r.headers["x-request-id"]
    ops = [o["op"] for o in body["ops"]]
    assert {"history", "retrieve.embed", "retrieve.search", "answer.aggregated", "remember"} <= set(ops)
    assert all(o["pool"] and o["worker"] for o in body["ops"])


@pytest.mark.parametrize("how", ["body", "accept"])
def test_sse_streams_ops_and_tokens_in_order(server: ServerThread, how: str) -> None:
    payload = {"input": "where is my order?", **({"stream": True} if how == "body" else {})}
    headers = {**AUTH, **({"Accept": "text/event-stream"} if how == "accept" else {})}
    with _client(server) as c, c.stream("POST", "/v1/agents/rag-support/invoke", json=payload, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    names = [n for n, _ in events]
    assert names[0] == "request" and names[-1] == "result"
    rid = events[0][1]["request_id"]
    assert all(d["request_id"] == rid for _, d in events)
    starts = {d["op"]: i for i, (n, d) in enumerate(events) if n == "op_start"}
    ends = {d["op"]: i for i, (n, d) in enumerate(events) if n == "op_end"}
    assert set(starts) == set(ends) and all(starts[op] < ends[op] for op in starts)
    tokens = [(i, d) for i, (n, d) in enumerate(events) if n == "token"]
    assert tokens and all(d["op"] == "answer.aggregated" for _, d in tokens)
    assert all(starts["answer.aggregated"] < i < ends["answer.aggregated"] for i, _ in tokens)
    assert [d["index"] for _, d in tokens] == list(range(len(tokens)))
    result = events[-1][1]
    assert result["ok"] and result["text"] == "".join(d["text"] for _, d in tokens)


def test_openai_client_parses_chat_completions(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)
    messages = [{"role": "user", "content": "say hello"}]
    full = client.chat.completions.create(model="chat", messages=messages)
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and full.model == "chat" and text
    assert full.usage.completion_tokens == 16 and full.choices[0].finish_reason == "length"  # max_new_tokens
    chunks = list(client.chat.completions.create(model="chat", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text  # same greedy decode
    assert chunks[-1].usage.completion_tokens == 16
    short = client.chat.completions.create(model="chat", messages=messages, max_tokens=4)
    assert short.usage.completion_tokens == 4 and text.startswith(short.choices[0].message.content)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=messages)
    with pytest.raises(openai.BadRequestError, match="not a single LLM node"):
        client.chat.completions.create(model="rag-support", messages=messages)


def test_in_flight_cap_answers_429_with_retry_after(server: ServerThread) -> None:
    with _client(server) as c, ExitStack() as stack:
        held = [_open_stream(stack, c, "slow", f"sleep:2 held {i}") for i in range(3)]  # one runs, two queue
        r = c.post("/v1/agents/slow/invoke", headers=AUTH, json={"input": "one more"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "in_flight_limit"
        assert int(r.headers["retry-after"]) >= 1
        assert len(held) == 3
    # leaving the streams cancelled those requests: capacity is back
    with _client(server, headers=AUTH) as c:
        after = c.post("/v1/agents/slow/invoke", json={"input": "after"}).json()
        assert after["ok"] and after["request_id"]


def test_full_pool_queue_answers_429(server: ServerThread) -> None:
    with _client(server) as c, ExitStack() as stack:
        held = [_open_stream(stack, c, "narrow", "sleep:2 running"),
                _open_stream(stack, c, "narrow", "queued")]  # the pool's queue holds one op: now full
        r = c.post("/v1/agents/narrow/invoke", headers=AUTH, json={"input": "refused"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "pool_queue_full"
        assert int(r.headers["retry-after"]) >= 1 and len(held) == 2


def test_request_deadline_answers_504(server: ServerThread) -> None:
    with _client(server, headers=AUTH) as c:
        r = c.post("/v1/agents/slow/invoke", json={"input": "sleep:3 too slow", "timeout_s": 1})
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "request_deadline" and "deadline of 1 s" in err["message"]


def test_plan_view_and_metrics(server: ServerThread) -> None:
    import time

    with _client(server, headers=AUTH) as c:
        for _ in range(200):  # bounded wait for the advisory controller's first decision (dwell 5 s)
            rag = c.get("/v1/plan", params={"agent": "rag-support"}).json()["agents"]["rag-support"]
            if rag["controller"]["decisions"]:
                break
            time.sleep(0.1)
        assert rag["plan"]["schema"] == "terrazzo.plan/v2" and rag["plan"]["by"] == "file"
        ctl = rag["controller"]
        assert ctl["mode"] == "advisory" and ctl["replan"] == "available"
        dec = ctl["decisions"][-1]
        assert dec["action"] == "replan" and dec["acted"] is False and dec["outcome"].startswith("advisory")
        assert dec["plan"]["rate_per_s"] < 5  # traffic here is below 0.6 × the plan's 5 req/s
        assert {p: v["workers"] for p, v in rag["pools"].items()} == {p: w["before"] for p, w in dec["workers"].items()}
        text = c.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert any(s.labels == {"agent": "rag-support", "action": "replan", "acted": "false"}
               for s in fams["tz_controller_decisions"].samples)
    assert {s.labels["agent"] for s in fams["tz_pool_workers"].samples} == {"rag-support", "chat", "slow", "narrow"}
    assert {s.labels["reason"] for s in fams["tz_agent_rejected"].samples} >= {"in_flight_limit", "pool_queue_full"}
    assert any(s.labels.get("agent") == "chat" for s in fams["tz_op_latency_seconds"].samples)  # runtime's own
    assert fams["tz_controller_plan_rate_per_second"].samples


def test_openapi_document_is_valid(server: ServerThread) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from schemathesis.specs.openapi.definitions import OPENAPI_31  # the OpenAPI 3.1 meta-schema

    doc = httpx.get(server.url + "/openapi.json").json()
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)
    assert {"/v1/agents/{name}/invoke", "/v1/chat/completions", "/v1/plan", "/healthz", "/readyz",
            "/metrics"} <= set(doc["paths"])


def test_schemathesis_finds_no_server_error(server: ServerThread) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    seen: dict[str, set[int]] = {}

    def fuzz(op: object, mode: object) -> None:
        label = f"{op.method.upper()} {op.path}"  # type: ignore[attr-defined]

        @given(case=op.as_strategy(generation_mode=mode))  # type: ignore[attr-defined]
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: object) -> None:
            r = case.call(base_url=server.url, headers=AUTH, timeout=60)  # type: ignore[attr-defined]
            seen.setdefault(label, set()).add(r.status_code)
            if r.status_code >= 500:
                failures.append(f"{label}: {r.status_code} {r.text[:300]}")

        try:
            check()
        except Unsatisfiable:  # no invalid request exists for a route without inputs
            assert mode == schemathesis.GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        for mode in schemathesis.GenerationMode:  # valid requests, then invalid ones (those must get 4xx)
            fuzz(result.ok(), mode)
    assert not failures, failures
    print(seen)
    invoke = seen["POST /v1/agents/{name}/invoke"]
    assert 200 in invoke and 422 in invoke and 200 in seen["POST /v1/chat/completions"], seen


def test_controller_replans_and_resizes_the_pool(server: ServerThread, chat_plan: tuple[Path, dict]) -> None:
    """Idle after start, the chat agent's traffic is far below 0.6 × the planned 5 req/s: the controller
    re-plans at the measured rate with the planner and shrinks the pool the 5 req/s plan sized at 2."""
    import time

    _, doc = chat_plan
    planned = {o["pool"]: min(max(o["replicas"], 1), 2) for o in doc["ops"]}
    assert max(planned.values()) == 2, doc["ops"]  # the 5 req/s plan asks for more than one replica
    svc = server.services["chat"]
    for _ in range(600):  # bounded wait for the first applied decision
        if any(d.get("acted") for d in svc.controller.decisions):
            break
        time.sleep(0.05)
    first = next(d for d in svc.controller.decisions if d.get("acted"))
    assert first["action"] == "replan" and "< 0.6 × 5" in first["reason"] and first["plan"]["rate_per_s"] < 3
    assert {p: w["before"] for p, w in first["workers"].items()} == planned
    assert first["workers"] != {p: {"before": n, "after": n} for p, n in planned.items()}  # a pool shrank
    with _client(server, headers=AUTH) as c:
        view = c.get("/v1/plan", params={"agent": "chat"}).json()["agents"]["chat"]
    latest = [d for d in view["controller"]["decisions"] if d.get("acted")][-1]
    assert view["plan"]["by"] == "controller" and view["plan"]["rate_per_s"] == latest["plan"]["rate_per_s"]
    assert {p: v["workers"] for p, v in view["pools"].items()} == {p: w["after"] for p, w in latest["workers"].items()}
