"""Chaos against `terrazzo serve`, on loopback, on both backends (local worker processes and Ray actors):
a bounded mixed load while workers, the model server and (when present) a vLLM server are killed.

    .venv/bin/python bench/bench_chaos.py [--requests 240] [--concurrency 6] [--backends local ray] [--vllm] [--write]

The server (the real app and uvicorn, in this process so the drill can reach its pools) serves three
agents for two tenants: `memo` (memory_load -> compute -> memory_store: a memory node), `charge` (a python
tool with a side effect, not idempotent: it appends one line per call to a ledger) and `chat` (one LLM node
on an OpenAI-compatible endpoint: tests/bad_upstream.py in a subprocess, or with --vllm a vLLM server on the
tiny checkpoint, under /tmp/vllm.lock). The load mixes JSON invokes, SSE invokes (some clients leave after
the first event) and OpenAI chat completions (streamed or not); 25 % of the invokes are sent again with
the same request id. Meanwhile, every ~0.7 s a busy worker is killed (SIGKILL, or ray.kill), and the model
server is SIGKILLed once and restarted 8 s later.

Printed per backend: sent, ok, 4xx, 5xx, lost (no answer at all: a transport error, or a stream that ended
without its result or error event), duplicated side effects (ledger lines beyond one per charge) and
cross-session leaks (a memo answer showing a secret of another tenant or session). Required: 0, 0, 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import tests_path  # noqa: E402,F401  (drills, the bad upstream and the server harness)

from terrazzo.runtime.engines.vllm_server import LOCK_ENV, EngineLock, vllm_python  # noqa: E402

SECTION = "## Chaos: kills and resends under mixed load (bench/bench_chaos.py)"
VLLM_PY = vllm_python()  # the engine venv (make engine), or $TERRAZZO_VLLM_PYTHON
TENANTS = {"acme": "acme-" + secrets.token_hex(16), "globex": "globex-" + secrets.token_hex(16)}
SECRET = re.compile(r"secret-([a-z]+)-(c\d+)-\d+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the model server, killable ------------------------------------------------------------------------------
class Upstream:
    """tests/bad_upstream.py (answers `good`) in a uvicorn subprocess on a fixed port, or a vLLM server."""

    def __init__(self, port: int, vllm_model: Path | None, log: Path) -> None:
        self.port, self.vllm_model, self.log = port, vllm_model, log
        self.proc: subprocess.Popen | None = None
        self.lock = False
        self.kills = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, ready_timeout_s: float = 240.0) -> None:
        if self.vllm_model is not None:
            if not self.lock:  # held for the whole run; a bounded wait (20 min) for another user's vLLM
                self.lock = EngineLock.acquire(os.environ.get(LOCK_ENV, "/tmp/vllm.lock"), timeout_s=1200)
            cmd = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.vllm_model),
                   "--served-model-name", "good", "--host", "127.0.0.1", "--port", str(self.port),
                   "--max-model-len", "512", "--dtype", "float32"]
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        else:
            cmd = [sys.executable, "-m", "uvicorn", "bad_upstream:app", "--host", "127.0.0.1", "--port",
                   str(self.port), "--log-level", "warning"]
            env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT / "tests", stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        # a reaper, bounded by this process's life: should it die without cleaning up (Ray aborts the
        # process when its GCS goes away), the server's whole process group goes with it
        subprocess.Popen(["bash", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                          f"kill -9 -{self.proc.pid} 2>/dev/null"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the model server exited; see {self.log}")
            time.sleep(0.5)
        raise RuntimeError(f"the model server did not start in {ready_timeout_s:g} s; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1

    def stop(self) -> None:
        self.kill()
        if self.lock:
            EngineLock.release()
            self.lock = False


# --- the load ----------------------------------------------------------------------------------------------
@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    c4xx: int = 0
    c5xx: int = 0
    lost: int = 0
    left: int = 0          # streams this client abandoned on purpose (not answers)
    leaks: int = 0
    codes: Counter = field(default_factory=Counter)
    lost_detail: list[str] = field(default_factory=list)

    def count(self, status: int, code: str = "") -> None:
        self.sent += 1
        if status == 200:
            self.ok += 1
        elif 400 <= status < 500:
            self.c4xx += 1
        else:
            self.c5xx += 1
        self.codes[f"{status} {code}".strip()] += 1


def _sse(lines: list[str]) -> list[tuple[str, dict]]:
    out, event, data = [], "message", []
    for line in [*lines, ""]:
        if line.startswith(":"):
            continue
        if not line:
            if data:
                try:
                    out.append((event, json.loads("\n".join(data))))
                except json.JSONDecodeError:
                    out.append((event, {"raw": "\n".join(data)}))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return out


class Load:
    def __init__(self, url: str, tally: Tally, rng: random.Random) -> None:
        self.url, self.t, self.rng = url, tally, rng
        self.lock = threading.Lock()
        self.owned: dict[str, tuple[str, str]] = {}  # secret prefix -> (tenant, session)

    def _check_leak(self, tenant: str, session: str, text: str) -> None:
        for who, sess in SECRET.findall(text):
            if (who, sess) != (tenant, session):
                with self.lock:
                    self.t.leaks += 1

    def _record(self, status: int, code: str = "") -> None:
        with self.lock:
            self.t.count(status, code)

    def _lost(self, what: str) -> None:
        with self.lock:
            self.t.sent += 1
            self.t.lost += 1
            self.t.lost_detail.append(what[:200])

    def invoke(self, c: httpx.Client, tenant: str, agent: str, body: dict[str, Any], stream: bool, leave: bool,
               session: str = "") -> None:
        headers = {"Authorization": f"Bearer {TENANTS[tenant]}"}
        try:
            if not stream:
                r = c.post(f"/v1/agents/{agent}/invoke", headers=headers, json=body)
                code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
                self._record(r.status_code, code)
                if r.status_code == 200 and agent == "memo":
                    self._check_leak(tenant, session, r.json()["text"])
                return
            with c.stream("POST", f"/v1/agents/{agent}/invoke", headers=headers, json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    r.read()
                    self._record(r.status_code, r.json().get("error", {}).get("code", ""))
                    return
                lines: list[str] = []
                for line in r.iter_lines():
                    lines.append(line)
                    if leave and line.startswith("event: op_start"):
                        with self.lock:
                            self.t.left += 1
                        return  # the client goes away mid-request
            events = _sse(lines)
            last = events[-1] if events else ("", {})
            if last[0] == "result":
                self._record(200)
                if agent == "memo":
                    self._check_leak(tenant, session, last[1].get("text", ""))
            elif last[0] == "error":
                self._record(int(last[1].get("status", 500)), last[1].get("error", {}).get("code", ""))
            else:
                self._lost(f"{agent} stream ended with {last[0]!r}")
        except (httpx.HTTPError, ValueError) as exc:
            self._lost(f"{agent}: {type(exc).__name__}: {exc}")

    def chat(self, c: httpx.Client, tenant: str, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {TENANTS[tenant]}"}
        body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                "stream": stream}
        try:
            r = c.post("/v1/chat/completions", headers=headers, json=body)
            if not stream or r.status_code != 200:
                code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
                self._record(r.status_code, code)
                return
            data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
            if not data or data[-1] != "[DONE]":
                self._lost("chat stream without [DONE]")
                return
            errors = [json.loads(d) for d in data[:-1] if '"error"' in d]
            if errors:
                self._record(502 if errors[0]["error"].get("type") == "upstream_error" else 500,
                             errors[0]["error"].get("code", ""))
            else:
                self._record(200)
        except (httpx.HTTPError, ValueError) as exc:
            self._lost(f"chat: {type(exc).__name__}: {exc}")

    def one(self, i: int, c: httpx.Client) -> None:
        """Logical request i: its kind, then (25 % of invokes) the same request id once more."""
        rng = random.Random(i * 7919 + 1)
        tenant = rng.choice(list(TENANTS))
        kind = rng.random()
        if kind < 0.15:
            self.chat(c, tenant, stream=rng.random() < 0.5)
            return
        stream, leave = rng.random() < 0.4, False
        leave = stream and rng.random() < 0.3
        if kind < 0.6:
            session = f"c{rng.randrange(6)}"  # the same session names in both tenants
            body = {"input": f"secret-{tenant}-{session}-{i}", "session": session, "request_id": f"m{i}"}
            agent = "memo"
        else:
            session = ""
            body = {"input": f"pay-{i} sleep:0.{rng.randrange(1, 4)}", "request_id": f"p{i}"}
            agent = "charge"
        self.invoke(c, tenant, agent, body, stream, leave, session)
        if rng.random() < 0.25:  # resend by id: after its answer, or right after the client left
            self.invoke(c, tenant, agent, body, stream=rng.random() < 0.5, leave=False, session=session)


async def killer(service_pools: list[Any], upstream: Upstream, stop: threading.Event, every_s: float,
                 rng: random.Random, kills: Counter, outage_s: float = 8.0) -> None:
    """Kill a busy worker every `every_s` (any pool of any agent); kill the model server once, mid-run,
    and bring it back `outage_s` later."""
    t0 = time.monotonic()
    upstream_done = False
    while not stop.is_set():
        await asyncio.sleep(every_s)
        backends = [b for b in service_pools if b is not None]
        if not backends:
            continue
        backend = rng.choice(backends)
        busy = [(p, i) for p in backend.pools for i, it in enumerate(backend.pools[p].busy) if it is not None]
        if busy:
            pool, index = rng.choice(busy)
            if backend.kill_worker(pool, index) is not None or backend.name == "ray":
                kills["workers"] += 1
        if not upstream_done and time.monotonic() - t0 > 3 * every_s:
            upstream_done = True
            await asyncio.to_thread(upstream.kill)
            kills["model server"] += 1
            await asyncio.sleep(outage_s)  # long enough to outlast the client's retries
            await asyncio.to_thread(upstream.start)


def run_backend(backend: str, args: argparse.Namespace, tmp: Path, upstream: Upstream) -> dict[str, Any]:
    from drills import ledger
    from serve_harness import ServerThread

    from terrazzo.server.service import AgentService
    from terrazzo.server.settings import LimitSettings, ServeSettings

    state = tmp / backend
    (state / "effects").mkdir(parents=True, exist_ok=True)
    server_log = logging.getLogger("terrazzo.server")  # each failure is logged with its trace: to a file
    server_log.handlers[:] = [logging.FileHandler(tmp / f"server-{backend}.log")]
    server_log.propagate = False
    os.environ["TZ_EFFECTS_DIR"] = str(state / "effects")
    (state / "run.yaml").write_text(json.dumps({
        "state_dir": str(state), "warmup": False, "max_new_tokens": 8, "op_timeout_s": 30, "queue_depth": 64,
        "models": {"llama-3-70b": {"endpoint": upstream.base, "served_name": "good"}}}))
    settings = ServeSettings(controller={"enabled": False},
                             limits=LimitSettings(max_in_flight=32, request_timeout_s=60))
    data = ROOT / "tests/data/serve"
    services = [AgentService(data / "memo.yaml", None, state / "run.yaml", backend, settings,
                             min_workers_per_pool=2),
                AgentService(data / "charge.yaml", None, state / "run.yaml", backend, settings,
                             min_workers_per_pool=2),
                AgentService(data / "chat.yaml", None, state / "run.yaml", backend, settings)]
    tally, kills = Tally(), Counter()
    srv = ServerThread(services, settings, {tok: name for name, tok in TENANTS.items()}).start()
    stop = threading.Event()
    loop = asyncio.new_event_loop()
    drill = threading.Thread(target=lambda: loop.run_until_complete(killer(
        [s.runtime.backend for s in services[:2]], upstream, stop, args.kill_every_s, random.Random(args.seed),
        kills)), daemon=True)
    t0 = time.monotonic()
    try:
        drill.start()
        load = Load(srv.url, tally, random.Random(args.seed))
        queue = list(range(args.requests))
        qlock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=srv.url, timeout=90) as c:
                while True:
                    with qlock:
                        if not queue:
                            return
                        i = queue.pop(0)
                    load.one(i, c)

        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        stop.set()
        drill.join(60)
        srv.stop()
    wall_s = time.monotonic() - t0
    charged = Counter(line.split(" sleep:")[0] for line in ledger())
    dup = sum(n - 1 for n in charged.values() if n > 1)
    return {"backend": backend, "tally": tally, "kills": dict(kills), "dup": dup, "charges": len(charged),
            "wall_s": wall_s}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=240, help="logical requests per backend (plus resends)")
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--backends", nargs="+", default=["local", "ray"])
    ap.add_argument("--kill-every-s", type=float, default=0.7)
    ap.add_argument("--vllm", action="store_true", help="the model server is vLLM on the tiny checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tz-chaos-"))
    vllm_model = None
    if args.vllm:
        if VLLM_PY is None:
            print("no vLLM venv: the model server is tests/bad_upstream.py")
        else:
            from terrazzo.models.tiny import make_tiny_checkpoint

            # head size 64 / 2 = 32: vLLM's CPU attention takes multiples of 32 only
            vllm_model = Path(make_tiny_checkpoint(tmp / "tiny", heads=2, kv_heads=1))
    upstream = Upstream(free_port(), vllm_model, tmp / "upstream.log")
    results = []
    try:
        upstream.start()
        for backend in args.backends:
            results.append(run_backend(backend, args, tmp, upstream))
            r = results[-1]
            print(f"{backend}: {vars(r['tally'])} duplicated={r['dup']} kills={r['kills']}", flush=True)
            if upstream.proc is None or upstream.proc.poll() is not None:
                upstream.start()
    finally:
        upstream.stop()
    server = "vLLM (tiny checkpoint)" if vllm_model else "tests/bad_upstream.py"
    section = SECTION + (" — vLLM as the model server" if vllm_model else "")
    lines = [f"{section}\n", f"Run {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, loopback; "
             f"model server: {server}; {args.requests} logical requests per backend from {args.concurrency} "
             "clients, 25 % of invokes resent by id; a busy worker killed every "
             f"{args.kill_every_s:g} s, the model server SIGKILLed once and restarted 8 s later.\n",
             "```\nbench/bench_chaos.py " + " ".join(a for a in sys.argv[1:] if a != "--write") + "\n```\n",
             "| backend | sent | ok | 4xx | 5xx | lost | duplicated side effects | cross-session leaks | "
             "workers killed | wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    failed = False
    for r in results:
        t: Tally = r["tally"]
        lines.append(f"| {r['backend']} | {t.sent} | {t.ok} | {t.c4xx} | {t.c5xx} | {t.lost} | {r['dup']} | "
                     f"{t.leaks} | {r['kills'].get('workers', 0)} | {r['wall_s']:.0f} |")
        failed |= bool(t.lost or r["dup"] or t.leaks)
    for r in results:
        t = r["tally"]
        lines.append(f"\n{r['backend']}: answers by status and code: "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(t.codes.items())) +
                     f"; {t.left} streams left mid-request on purpose (not counted as sent); "
                     f"{r['charges']} distinct charges in the ledger.")
        if t.lost_detail:
            lines.append("lost: " + "; ".join(t.lost_detail[:5]))
    lines.append(f"\nRequired: 0 lost, 0 duplicated side effects, 0 leaks: {'FAILED' if failed else 'met'}.\n")
    out = "\n".join(lines)
    print(out)
    if args.write:
        from bench_abuse import write_section

        write_section(out, section)  # one section per model server: the fake endpoint, and vLLM
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
