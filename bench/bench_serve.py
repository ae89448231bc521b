"""`terrazzo serve` under a changing load, on loopback: the RAG example (MiniLM + FAISS + the tiny
random-weight Llama) served by the real CLI in a subprocess, driven by open-loop Poisson arrivals.

    .venv/bin/python bench/bench_serve.py [--rate1 4.5] [--rate2 9] [--seconds 20 25 15] [--seed 0] [--write]

Phase 1: a sustained rate inside the controller's band around the plan's 5 req/s (no decision expected).
Phase 2: a step up past 1.3 × 5 req/s; the controller re-plans with the planner at the measured rate and
resizes the pools (its decision and the worker counts before/after are printed; requests sent before and
after the resize are compared side by side). Phase 3: the same rate, and one busy worker of the LLM pool
is SIGKILLed mid-run. Every request carries its own id; a 429 is retried with the same id after its
Retry-After (at most 6 tries). Lost = sent and never answered; duplicated = answered more than once.
The server's own count of answered requests (/metrics) is checked against the client's. Bounded: the
arrivals are fixed by rate × seconds, the whole run takes under 3 minutes. --write puts the output in
docs/BENCHMARKS.md (its own section).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
AGENT, PLAN = ROOT / "examples/agents/rag-support.yaml", ROOT / "examples/runtime/rag-support.plan.json"
QUESTIONS = ["how do I return an item?", "where is my order?", "how long does shipping take?",
             "can I change my delivery address?", "do you ship abroad?", "my parcel arrived damaged"]
SECTION = "## Serving (bench/bench_serve.py)"


@dataclass
class Req:
    id: str
    sent_s: float                        # first send, seconds since the run started
    answers: int = 0
    status: list[int] = field(default_factory=list)
    latency_s: float | None = None       # of the answered attempt
    e2e_s: float | None = None           # first send → answer, 429 waits included
    done_s: float | None = None


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def summary(reqs: list[Req], span_s: float) -> dict[str, Any]:
    ok = [r for r in reqs if r.answers]
    lat = [r.latency_s for r in ok if r.latency_s is not None]
    return {"sent": len(reqs), "answered": len(ok), "lost": len(reqs) - len(ok),
            "duplicated": sum(max(r.answers - 1, 0) for r in reqs),
            "429s": sum(s == 429 for r in reqs for s in r.status),
            "other errors": sum(s not in (200, 429) for r in reqs for s in r.status),
            "answers/s": len(ok) / span_s if span_s > 0 else 0.0,
            "p50 ms": pct(lat, 0.5) * 1e3, "p99 ms": pct(lat, 0.99) * 1e3,
            "p99 e2e ms": pct([r.e2e_s for r in ok if r.e2e_s is not None], 0.99) * 1e3}


class Bench:
    def __init__(self, url: str, token: str, seed: int) -> None:
        self.url, self.rng, self.t0 = url, random.Random(seed), time.monotonic()
        self.c = httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"},
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def one(self, req: Req) -> None:
        for _ in range(6):
            t = time.monotonic()
            try:
                r = await self.c.post("/v1/agents/rag-support/invoke",
                                      json={"input": self.rng.choice(QUESTIONS), "request_id": req.id})
            except httpx.TransportError:
                req.status.append(-1)  # outcome unknown: not retried (it could run twice), counted lost
                return
            req.status.append(r.status_code)
            if r.status_code == 200:
                assert r.json()["request_id"] == req.id, "an answer came back under another request's id"
                req.answers += 1
                req.latency_s, req.done_s = time.monotonic() - t, self.now()
                req.e2e_s = req.done_s - req.sent_s
                return
            if r.status_code != 429:
                return
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    async def phase(self, name: str, rate: float, seconds: float, during: Any = None) -> tuple[list[Req], float]:
        """Open-loop Poisson arrivals at `rate` for `seconds`; returns the requests and the phase start."""
        start, t, tasks, reqs = self.now(), 0.0, [], []
        side = asyncio.create_task(during(start)) if during else None
        while True:
            t += self.rng.expovariate(rate)
            if t >= seconds:
                break
            await asyncio.sleep(max(start + t - self.now(), 0.0))
            req = Req(f"{name}-{len(reqs):05d}", self.now())
            reqs.append(req)
            tasks.append(asyncio.create_task(self.one(req)))
        await asyncio.gather(*tasks)
        if side is not None:
            await side
        return reqs, start

    async def plan(self) -> dict[str, Any]:
        return (await self.c.get("/v1/plan")).json()["agents"]["rag-support"]

    async def answered_by_server(self) -> float:
        text = (await self.c.get("/metrics")).text
        fam = next(f for f in text_string_to_metric_families(text) if f.name == "tz_agent_requests")
        return sum(s.value for s in fam.samples if s.name.endswith("_total") and s.labels["outcome"] == "ok")


def workers(view: dict[str, Any]) -> dict[str, int]:
    return {p: v["workers"] for p, v in view["pools"].items()}


def table(rows: list[tuple[str, float, dict[str, Any]]]) -> str:
    cols = ["sent", "answered", "lost", "duplicated", "429s", "other errors", "answers/s", "p50 ms", "p99 ms",
            "p99 e2e ms"]
    out = ["| phase | offered req/s | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, rate, s in rows:
        cells = [f"{s[c]:.1f}" if isinstance(s[c], float) else str(s[c]) for c in cols]
        out.append(f"| {name} | {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


async def drive(b: Bench, rate1: float, rate2: float, secs: list[float]) -> dict[str, Any]:
    view0 = await b.plan()
    llm_pool = next(p for p, v in view0["pools"].items() if any(op.startswith("answer") for op in v["ops"]))
    print(f"plan: {Path(view0['plan']['source']).relative_to(ROOT)} at {view0['plan']['rate_per_s']:g} req/s; band "
          f"{view0['controller']['band_per_s']}; workers {workers(view0)}; LLM pool {llm_pool}")

    p1, s1 = await b.phase("p1", rate1, secs[0])
    v1 = await b.plan()
    print(f"phase 1 ({rate1:g} req/s): controller {v1['controller']['last_evaluation']['action']} — "
          f"{v1['controller']['last_evaluation']['reason']}; decisions so far: {len(v1['controller']['decisions'])}")

    applied: dict[str, Any] = {}
    seen = len(v1["controller"]["decisions"])

    async def watch(start: float) -> None:  # when the controller's resize lands
        while b.now() < start + secs[1] and not applied:
            view = await b.plan()
            grown = [d for d in view["controller"]["decisions"][seen:]
                     if d.get("acted") and any(w["after"] > w["before"] for w in d["workers"].values())]
            if grown:
                applied.update(at_s=b.now(), decision=grown[0], workers=workers(view))
            await asyncio.sleep(0.25)

    p2, s2 = await b.phase("p2", rate2, secs[1], watch)
    v2 = await b.plan()
    for d in v2["controller"]["decisions"]:
        print(f"decision at {d['at']}: {d['action']} — {d['reason']} → {d['outcome']}")
        moved = "".join(f"\n   not applied: {m}" for m in d.get("not_applied", []))
        print("   workers before→after: " + ", ".join(f"{p} {w['before']}→{w['after']}"
                                                     for p, w in d.get("workers", {}).items()) + moved)
    print(f"workers before phase 2: {workers(v1)}; after: {workers(v2)}")

    killed: dict[str, Any] = {}

    async def kill(start: float) -> None:
        await asyncio.sleep(min(5.0, secs[2] / 3))
        for _ in range(100):  # catch a worker in the middle of an op (bounded)
            pool = (await b.plan())["pools"][llm_pool]
            if pool["busy_pids"]:
                break
            await asyncio.sleep(0.02)
        pid = (pool["busy_pids"] or pool["worker_pids"])[0]
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, busy=pid in pool["busy_pids"], at_s=b.now() - start, before=pool["stats"])

    p3, s3 = await b.phase("p3", rate2, secs[2], kill)
    v3 = await b.plan()
    after = v3["pools"][llm_pool]["stats"]
    print(f"phase 3: SIGKILL worker pid {killed['pid']} of {llm_pool} ({'busy' if killed['busy'] else 'idle'}) "
          f"{killed['at_s']:.1f} s in; pool retried {after['retried'] - killed['before']['retried']} op(s), "
          f"restarted {after['restarts'] - killed['before']['restarts']} worker(s)")

    def span(reqs: list[Req], start: float) -> float:
        return max((r.done_s or start) for r in reqs) - start

    cut = applied.get("at_s")
    before = [r for r in p2 if cut is None or r.sent_s < cut]
    after2 = [r for r in p2 if cut is not None and r.sent_s >= cut]
    rows = [("1 steady", rate1, summary(p1, span(p1, s1))), ("2 step up", rate2, summary(p2, span(p2, s2))),
            ("3 worker killed", rate2, summary(p3, span(p3, s3)))]
    split = []
    if cut is not None and before and after2:
        split = [("2, sent before the resize", rate2, summary(before, cut - s2)),
                 ("2, sent after the resize", rate2, summary(after2, span(after2, cut)))]
    every = p1 + p2 + p3
    return {"rows": rows, "split": split, "total": summary(every, 1.0), "server_ok": await b.answered_by_server(),
            "deadline_s": view0["plan"].get("deadline_s"), "applied": applied}


def start_server(tmp: Path, token: str, port: int) -> subprocess.Popen:
    ex = ROOT / "examples/runtime"
    (tmp / "run.yaml").write_text(
        f"documents: {ex / 'docs'}\ntools:\n  orders: {{function: '{ex / 'tools.py'}:order_status', timeout_s: 5}}\n"
        f"max_new_tokens: 16\nstate_dir: {ROOT / '.terrazzo/run'}\nmax_workers_per_pool: 3\n")
    (tmp / "serve.yaml").write_text(
        "limits: {max_in_flight: 48, shutdown_grace_s: 60}\n"
        "controller: {interval_s: 0.5, window_s: 6, min_window_s: 6, persist_s: 3, dwell_s: 10}\n")
    cmd = [sys.executable, "-m", "terrazzo.cli", "serve", str(AGENT), "--plan", str(PLAN), "--config",
           str(tmp / "run.yaml"), "--serve-config", str(tmp / "serve.yaml"), "--port", str(port),
           "--log-level", "warning"]
    print("server: " + " ".join(Path(c).name if "/" in c else c for c in cmd[1:]))
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "TERRAZZO_TOKEN": token},
                            stderr=open(tmp / "server.log", "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate1", type=float, default=4.5)
    ap.add_argument("--rate2", type=float, default=9.0)
    ap.add_argument("--seconds", type=float, nargs=3, default=[20.0, 25.0, 15.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    buf = io.StringIO()
    with tempfile.TemporaryDirectory() as d, redirect_stdout(Tee(buf)):
        tmp, token = Path(d), secrets.token_hex(16)
        import tests_path  # noqa: F401  (tests/ on the path: the loopback harness)
        from serve_harness import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t_start = time.monotonic()
        proc = start_server(tmp, token, port)
        try:
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() - t_start > 300:
                    raise SystemExit("server did not become ready:\n" + (tmp / "server.log").read_text()[-3000:])
                time.sleep(0.5)
            print(f"ready after {time.monotonic() - t_start:.0f} s (pools started and warm)")

            async def run() -> dict[str, Any]:
                b = Bench(url, token, args.seed)
                try:
                    return await drive(b, args.rate1, args.rate2, args.seconds)
                finally:
                    await b.c.aclose()

            res = asyncio.run(run())
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
        print()
        print(table(res["rows"]))
        if res["split"]:
            print()
            print(table(res["split"]))
            (_, _, a), (_, _, z) = res["split"]
            print(f"\nafter / before the resize: answers/s ×{z['answers/s'] / a['answers/s']:.2f}, "
                  f"p50 ×{z['p50 ms'] / a['p50 ms']:.2f}, p99 ×{z['p99 ms'] / a['p99 ms']:.2f}")
        tot = res["total"]
        print(f"\nall phases: sent {tot['sent']}, answered {tot['answered']}, lost {tot['lost']}, duplicated "
              f"{tot['duplicated']}; the server counted {res['server_ok']:.0f} answered (client {tot['answered']})")
        sla = res["deadline_s"]
        if sla:
            worst = max(s["p99 e2e ms"] for _, _, s in res["rows"]) / 1e3
            print(f"SLA (plan's end-to-end p99 ≤ {sla:g} s): worst phase p99 e2e {worst:.2f} s — "
                  f"{'met' if worst <= sla else 'missed'}")
        print(f"server exit code after SIGTERM: {code}; wall time {time.monotonic() - t_start:.0f} s")
    if args.write:
        write_section(buf.getvalue(), args)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


class Tee(io.TextIOBase):
    def __init__(self, buf: io.StringIO) -> None:
        self.buf, self.out = buf, sys.__stdout__

    def write(self, s: str) -> int:
        self.buf.write(s)
        return self.out.write(s)  # type: ignore[union-attr]

    def flush(self) -> None:
        self.out.flush()  # type: ignore[union-attr]


def write_section(output: str, args: argparse.Namespace) -> None:
    """Replace (or add) this benchmark's own section of docs/BENCHMARKS.md."""
    path = ROOT / "docs/BENCHMARKS.md"
    text = path.read_text()
    cmd = "bench/bench_serve.py" + ("" if (args.rate1, args.rate2, args.seconds, args.seed) ==
                                    (4.5, 9.0, [20.0, 25.0, 15.0], 0) else
                                    f" --rate1 {args.rate1:g} --rate2 {args.rate2:g} "
                                    f"--seconds {' '.join(f'{s:g}' for s in args.seconds)} --seed {args.seed}")
    body = (f"{SECTION}\n\n`.venv/bin/python {cmd} --write` — {datetime.date.today()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. The RAG example "
            "(examples/runtime/rag.yaml + rag-support.plan.json, tiny random-weight Llama) behind the real "
            "`terrazzo serve` on 127.0.0.1; run config as rag.yaml with `max_workers_per_pool: 3`; controller "
            "window 6 s, min window 6 s, persist 3 s, dwell 10 s (the defaults, 30/10/10/60 s, suit hours, not a "
            "one-minute run). Open-loop Poisson arrivals; a 429 is retried with the same request id after its "
            "Retry-After. p50/p99: latency of the answered attempt; p99 e2e: first send to answer, 429 waits "
            "included; answers/s: answered ÷ (last answer − phase start). The second table splits phase 2 at the "
            "moment the resize landed: same offered rate, before and after.\n\n```\n" + output.strip() + "\n```\n")
    if SECTION in text:
        head, _, rest = text.partition(SECTION)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
