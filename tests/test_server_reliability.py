"""Reliability and security of `terrazzo serve`, one test per finding of the review (issue 15), through a
real HTTP client on loopback: sessions owned by tenants, request ids answered once (a non-idempotent tool
never acts twice, also across a disconnect or a killed worker), error bodies without traces, the end of
streams past the shutdown grace, bounded metric labels, half-open sockets, token checks, Retry-After."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
from drills import ledger  # noqa: E402
from serve_harness import ServerThread, sse_events  # noqa: E402

from terrazzo.runtime.executors.memory import MemoryStore  # noqa: E402
from terrazzo.runtime.run_command import run_command  # noqa: E402
from terrazzo.server.admission import Admission  # noqa: E402
from terrazzo.server.api_errors import ApiError, ServeError  # noqa: E402
from terrazzo.server.auth import resolve_tokens  # noqa: E402
from terrazzo.server.service import AgentService  # noqa: E402
from terrazzo.server.settings import LimitSettings, ServeSettings, load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "serve"
ACME, GLOBEX = "acme-token-0123456789abcdef", "globex-token-0123456789abcdef"
A, B = {"Authorization": f"Bearer {ACME}"}, {"Authorization": f"Bearer {GLOBEX}"}



@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reliability")
    os.environ["TZ_EFFECTS_DIR"] = str(tmp / "effects")  # the charge tool's ledger; workers inherit it
    return tmp


@pytest.fixture(scope="module")
def server(state: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(controller={"enabled": False})
    own = {"state_dir": str(state), "warmup": False}
    services = [AgentService(DATA / f"{name}.yaml", None, None, "local", settings, **own)
                for name in ("memo", "charge", "broken")]
    with ServerThread(services, settings, {ACME: "acme", GLOBEX: "globex"}) as srv:
        yield srv


def _invoke(c: httpx.Client, agent: str, headers: dict, **body: object) -> httpx.Response:
    return c.post(f"/v1/agents/{agent}/invoke", headers=headers, json=body)


# --- 2. memory keyed by an explicit session the tenant owns -------------------------------------------------
def test_sessions_belong_to_their_tenant_and_request_ids_are_not_sessions(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        first = _invoke(c, "memo", A, input="my card is 4111-1111", session="s1", request_id="ticket-1")
        assert first.status_code == 200, first.text
        again = _invoke(c, "memo", A, input="what is my card?", session="s1").json()
        assert "4111-1111" in again["text"]  # the owner's own session remembers
        for body in ({"request_id": "ticket-1"}, {"session": "s1"}, {"session": "ticket-1"}, {}):
            other = _invoke(c, "memo", B, input="what is my card?", **body)
            assert other.status_code == 200, other.text
            # another tenant never reads it, whatever ids it sends: not in its answer, nor anywhere in the body
            # (the body's timing floats may hold the digits 4111, never the dashed number)
            assert "4111" not in other.json()["text"] and "4111-1111" not in other.text
        alone = _invoke(c, "memo", A, input="anything?", request_id="ticket-2").json()
        assert alone["text"].endswith("history: ")  # no session: no history, not even the tenant's own


def test_separate_runs_do_not_share_history(state: Path) -> None:
    agent = DATA / "memo.yaml"
    run_command(agent, None, ["my secret is 42"], state_dir=str(state / "runs"), warmup=False)
    second = run_command(agent, None, ["what is my secret?"], state_dir=str(state / "runs"), warmup=False)
    assert second.requests[0].ok and "42" not in second.requests[0].text


# --- 3. a request id runs once: replay, and a non-idempotent tool never acts twice -------------------------
def _count(query: str) -> int:
    return sum(line == query for line in ledger())


def test_completed_request_is_replayed_not_run_again(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        first = _invoke(c, "charge", A, input="order-1 $5", request_id="pay-1")
        second = _invoke(c, "charge", A, input="order-1 $5", request_id="pay-1")
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json() and _count("order-1 $5") == 1
        other = _invoke(c, "charge", B, input="order-1 $5", request_id="pay-1")  # globex's own pay-1
        assert other.status_code == 200 and _count("order-1 $5") == 2
        reused = _invoke(c, "charge", A, input="order-1 $500", request_id="pay-1")
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "request_id_reused"
        assert _count("order-1 $500") == 0


def test_resend_after_the_client_left_does_not_act_again(server: ServerThread) -> None:
    query = "order-2 $7 sleep:1.5"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/agents/charge/invoke", headers=A,
                      json={"input": query, "request_id": "pay-2", "stream": True}) as r:
            for name, _ in sse_events(r.iter_lines()):
                if name == "op_start":
                    break  # the client leaves while the tool runs
        for _ in range(100):  # bounded: the tool acted once
            if _count(query) == 1:
                break
            time.sleep(0.05)
        resent = _invoke(c, "charge", A, input=query, request_id="pay-2")
        assert resent.status_code == 200, resent.text
        assert resent.json()["ok"]  # answered with the recorded output of the first call, not a second call
        assert _count(query) == 1


def test_worker_killed_after_acting_never_acts_twice(server: ServerThread) -> None:
    query = "order-3 $9 crash-after"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        first = _invoke(c, "charge", A, input=query, request_id="pay-3")
        assert first.status_code == 503 and first.json()["error"]["code"] == "worker_lost"
        resent = _invoke(c, "charge", A, input=query, request_id="pay-3")
        assert resent.status_code >= 500 and "may already have acted" in resent.json()["error"]["message"]
    assert _count(query) == 1


# --- 8. error bodies carry no traceback, path or URL; the log has it under the correlation id ---------------
def test_error_body_has_no_trace_and_names_a_correlation_id(server: ServerThread,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="terrazzo.server"), \
            httpx.Client(base_url=server.url, timeout=60) as c:
        r = _invoke(c, "broken", A, input="db")
    assert r.status_code == 500
    err = r.json()["error"]
    for leak in ("Traceback", "/srv/secret", "site-packages", ".py", "line "):
        assert leak not in r.text
    assert "FileNotFoundError" in err["message"] and err["correlation_id"]
    logged = [rec.getMessage() for rec in caplog.records if err["correlation_id"] in rec.getMessage()]
    assert logged and "/srv/secret/config/db.yaml" in logged[0]


# --- 6. metrics labels cannot be minted by clients ------------------------------------------------------------
def test_invented_methods_do_not_grow_the_metrics(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(300):
            c.request(f"BREW{i}", f"/nowhere/{i}")
        text = c.get("/metrics", headers=A).text
    series = [line for line in text.splitlines() if line.startswith("tz_http_requests_total{")]
    assert not any("BREW" in line or "/nowhere" in line for line in series)
    assert any('method="other"' in line for line in series) and len(series) < 20


# --- 1. stores are safe under every thread model ---------------------------------------------------------------
def test_memory_store_serves_every_thread(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite")
    store.store("s", "k", "from the creating thread")
    errors: list[BaseException] = []

    def other(i: int) -> None:
        try:
            store.store("s", "k", f"from thread {i}", key=f"t{i}")
            assert "from the creating thread" in store.load("s", "k", limit=100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=other, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(store.load("s", "k", limit=100)) == 9


def test_ray_backend_with_memory_answers_json_and_streams(state: Path) -> None:
    ray = pytest.importorskip("ray")
    try:
        _ray_backend_with_memory(state)
    finally:  # the service started a local Ray inside this process: left up, its raylet outlives the test
        ray.shutdown()


def _ray_backend_with_memory(state: Path) -> None:
    settings = ServeSettings(controller={"enabled": False})
    svc = AgentService(DATA / "memo.yaml", None, None, "ray", settings, state_dir=str(state / "ray"), warmup=False)
    with ServerThread([svc], settings, ACME) as srv, httpx.Client(base_url=srv.url, timeout=60, headers=A) as c:
        for i in range(3):  # JSON after SSE after JSON: each call style on Ray's threads
            assert _invoke(c, "memo", {}, input=f"json {i}", session="r").status_code == 200
            with c.stream("POST", "/v1/agents/memo/invoke", json={"input": f"sse {i}", "session": "r",
                                                                  "stream": True}) as r:
                names = [name for name, _ in sse_events(r.iter_lines())]
            assert names[-1] == "result", names
        last = _invoke(c, "memo", {}, input="end", session="r").json()
        assert "json 2" in last["text"] and "sse 2" in last["text"]


# --- 5. past the shutdown grace: JSON gets the error envelope, SSE an error event ----------------------------
def test_shutdown_past_grace_answers_every_request(state: Path) -> None:
    settings = ServeSettings(controller={"enabled": False}, limits=LimitSettings(shutdown_grace_s=0.5))
    svc = AgentService(DATA / "slow.yaml", None, None, "local", settings, state_dir=str(state / "drain"),
                       warmup=False)
    srv = ServerThread([svc], settings, ACME).start()
    out: dict[str, httpx.Response] = {}
    try:
        def json_call() -> None:
            with httpx.Client(base_url=srv.url, timeout=60, headers=A) as c:
                out["json"] = _invoke(c, "slow", {}, input="sleep:8 json")

        t = threading.Thread(target=json_call)
        t.start()
        with httpx.Client(base_url=srv.url, timeout=60, headers=A) as c, \
                c.stream("POST", "/v1/agents/slow/invoke", json={"input": "sleep:8 sse", "stream": True}) as r:
            events = sse_events(r.iter_lines())
            assert next(events)[0] == "request"
            for _ in range(200):  # bounded: both requests in flight
                if svc.admission.in_flight == 2:
                    break
                time.sleep(0.02)
            srv.drain()
            rest = list(events)
        t.join(30)
    finally:
        srv.stop()
    assert rest and rest[-1][0] == "error" and rest[-1][1]["error"]["code"] == "shutdown"
    assert out["json"].status_code == 503 and out["json"].headers["content-type"] == "application/json"
    assert out["json"].json()["error"]["code"] == "shutdown"


# --- 7. half-open sockets cannot lock authorised clients out ----------------------------------------------
def test_half_open_sockets_do_not_lock_out_clients(state: Path) -> None:
    limits = LimitSettings(max_connections=32, max_connections_per_client=32, header_timeout_s=2)
    settings = ServeSettings(controller={"enabled": False}, limits=limits)
    svc = AgentService(DATA / "slow.yaml", None, None, "local", settings, state_dir=str(state / "loris"),
                       warmup=False)
    socks: list[socket.socket] = []
    with ServerThread([svc], settings, ACME) as srv:
        try:
            for _ in range(100):  # three times the cap, each holding half a request head
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(b"POST /v1/agents/slow/invoke HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
            with httpx.Client(base_url=srv.url, timeout=30, headers=A) as c:
                codes = [_invoke(c, "slow", {}, input=f"real {i}").status_code for i in range(20)]
            assert codes == [200] * 20
            assert srv.limits.evicted >= 100 - 32
            socks[-1].settimeout(10)
            assert socks[-1].recv(100) == b""  # the head deadline closed the newest half-open socket too
        finally:
            for s in socks:
                s.close()


# --- 11. a token no client could send is refused at start --------------------------------------------------
@pytest.mark.parametrize("token", ["   " * 8, " " + "x" * 24, "x" * 24 + " ", "abc def ghi jkl mno pqr"])
def test_tokens_with_whitespace_are_refused(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_TOKEN", token)
    with pytest.raises(ServeError, match="whitespace"):
        resolve_tokens(load_settings(None, auth={"token_env": "WS_TOKEN"}), "127.0.0.1")


def test_tenants_need_distinct_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T1", ACME)
    monkeypatch.setenv("T2", ACME)
    settings = load_settings(None, auth={"tenants": {"one": {"token_env": "T1"}, "two": {"token_env": "T2"}}})
    with pytest.raises(ServeError, match="same token"):
        resolve_tokens(settings, "127.0.0.1")
    monkeypatch.setenv("T2", GLOBEX)
    assert resolve_tokens(settings, "127.0.0.1") == {ACME: "one", GLOBEX: "two"}


# --- 12. Retry-After from the measured drain rate -----------------------------------------------------------
def test_retry_after_follows_the_drain_rate() -> None:
    now = [0.0]
    adm = Admission("a", max_in_flight=64, queue_limit=8, window_s=30, predicted_e2e_s=2.0, clock=lambda: now[0])
    now[0] = 100.0  # the server idled 100 s before the burst (an idle window must not dilute the drain rate)
    wide = {"p": {"queued": 0, "workers": 64}}
    for _ in range(64):
        adm.admit(wide, {"p"})
    with pytest.raises(ApiError) as burst:  # nothing finished yet: one wave of 64 parallel workers, 2 s
        adm.admit(wide, {"p"})
    assert burst.value.headers["Retry-After"] == "2"
    for i in range(64):  # 64 answers in the next 14 s, each slot refilled at once
        now[0] = 100.0 + 14.0 * (i + 1) / 64
        adm.release(2.0, ["p"])
        adm.admit(wide, {"p"})
    with pytest.raises(ApiError) as measured:
        adm.admit(wide, {"p"})
    assert measured.value.headers["Retry-After"] == "14"  # 64 in flight drain at 64 per 14 s

