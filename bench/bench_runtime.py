"""Orchestration overhead per op: terrazzo's runtime (local processes, Ray actors) against a direct
in-process call and against LangGraph, on the same chain of no-op nodes, side by side in one run.

    .venv/bin/python bench/bench_runtime.py [--nodes 10] [--requests 200] [--write]

Per op = wall time / (requests × nodes), requests one after another (latency, not throughput), after
a warm-up; the 16-way column runs 16 requests at once. The chain's nodes all sit on one pool, so by
default terrazzo runs them as one fused segment: one round trip to a worker process (pipe + pickle both
ways) per request, every op still with its own span, metrics and sample. "one round trip per op"
(fuse_ops: false) is what ops alternating between pools pay. LangGraph runs every node in the calling
process. --write appends the table to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import time
from pathlib import Path
from typing import TypedDict

import tests_path  # noqa: F401  (tests/ on the path: drill tools, loopback harness)

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text


def chain_agent(n: int) -> str:
    nodes = "\n".join(f"  - {{id: n{i}, kind: compute, function: 'drills:noop', cpu_s: 0 s}}"
                      for i in range(n))
    edges = "\n".join(f"  - {{from: n{i}, to: n{i + 1}}}" for i in range(n - 1))
    return f"name: chain\nnodes:\n{nodes}\nedges:\n{edges}\n"


def noop(state: dict) -> dict:
    return {}


def bench_direct(n: int, reqs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reqs):
        state = {"text": "x"}
        for _ in range(n):
            state = {**state, **noop(state)}
    return (time.perf_counter() - t0) / (reqs * n)


def bench_langgraph(n: int, reqs: int) -> float | None:
    try:
        from langgraph.graph import END, START, StateGraph
    except ImportError:
        return None

    class S(TypedDict):
        text: str

    g = StateGraph(S)
    for i in range(n):
        g.add_node(f"n{i}", noop)
    g.add_edge(START, "n0")
    for i in range(n - 1):
        g.add_edge(f"n{i}", f"n{i + 1}")
    g.add_edge(f"n{n - 1}", END)
    app = g.compile()
    for _ in range(10):
        app.invoke({"text": "x"})
    t0 = time.perf_counter()
    for _ in range(reqs):
        app.invoke({"text": "x"})
    return (time.perf_counter() - t0) / (reqs * n)


def bench_terrazzo(backend: str, n: int, reqs: int, concurrency: int, fuse: bool = True) -> tuple[float, float]:
    agent = agent_from_text(chain_agent(n))
    cfg = RunConfig(state_dir="/tmp/tz-bench", min_workers_per_pool=2, max_workers_per_pool=2, warmup=False,
                    fuse_ops=fuse)

    async def go() -> tuple[float, float]:
        async with Runtime(agent, load_plan(None), cfg, backend) as rt:
            for _ in range(5):
                assert (await rt.run("x")).ok
            t0 = time.perf_counter()
            for _ in range(reqs):
                await rt.run("x")
            seq = (time.perf_counter() - t0) / (reqs * n)
            sem = asyncio.Semaphore(concurrency)

            async def one() -> None:
                async with sem:
                    await rt.run("x")

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(reqs)))
            return seq, (time.perf_counter() - t0) / (reqs * n)

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--write", action="store_true", help="append the result to docs/BENCHMARKS.md")
    a = ap.parse_args()
    direct = bench_direct(a.nodes, a.requests * 10)
    lg = bench_langgraph(a.nodes, a.requests)
    rows = [("direct in-process call", direct, None)]
    if lg is not None:
        rows.append(("LangGraph (in-process)", lg, None))
    rows.append(("terrazzo local, fused (default)", *bench_terrazzo("local", a.nodes, a.requests, 16)))
    rows.append(("terrazzo local, one round trip per op", *bench_terrazzo("local", a.nodes, a.requests, 16, False)))
    if not a.no_ray:
        try:
            import ray  # noqa: F401

            ray_reqs = max(a.requests // 4, 20)
            rows.append(("terrazzo ray, fused (default)", *bench_terrazzo("ray", a.nodes, ray_reqs, 16)))
            rows.append(("terrazzo ray, one actor call per op", *bench_terrazzo("ray", a.nodes, ray_reqs, 16, False)))
        except ImportError:
            pass
    lines = [f"{'runner':38s} {'µs/op seq':>10s} {'µs/op 16-way':>13s} {'÷ direct':>10s} {'÷ LangGraph':>12s}"]
    for name, s, c in rows:
        lines.append(f"{name:38s} {s * 1e6:10.1f} {'-' if c is None else f'{c * 1e6:.1f}':>13s} {s / direct:10.0f}"
                     f" {'-' if lg is None else f'{s / lg:.2f}':>12s}")
    table = "\n".join(lines)
    print(table)
    if a.write:
        doc = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
        stamp = datetime.date.today().isoformat()
        with doc.open("a") as f:
            f.write(f"\n## Runtime: orchestration overhead per op ({stamp})\n\n"
                    f"Chain of {a.nodes} no-op nodes, {a.requests} requests one after another (16 at once for the "
                    f"16-way column); Python {platform.python_version()}, {platform.machine()}, 2-core VM.\n\n"
                    f"Command: `.venv/bin/python bench/bench_runtime.py --write`\n\n```\n{table}\n```\n")


if __name__ == "__main__":
    main()
