"""Planning time with KV reuse on and off, side by side, and the TCO each plan reaches.

    .venv/bin/python bench/bench_plan_kv.py [--sizes 100,1000] [--rate 20] [--tco]

With --tco it first plans the shipped tool-loop and chat agents with and without reuse (each plan
simulated and re-planned until it passes: verify/kv_comparison.py) and prints both TCOs and the ratio.

The agent is bench_plan.py's chain (every fifth node an LLM call: prefill, decode, aggregated; the rest
tools and embeddings, 12 device types, 20 req/s under a TTFT/TBT SLA), with every LLM call behind a
shared 2,048-token system prompt (spec `prefix`), so every first-token op
gets its retain / host / disk variants. Per size it prints build (IR + KV pricing) and MILP seconds with
reuse and with --no-kv-reuse (the same code path), their ratio, and both TCOs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from terrazzo.catalog.catalog_loader import load_catalog  # noqa: E402
from terrazzo.plan.from_ir import build  # noqa: E402
from terrazzo.plan.milp import solve_milp  # noqa: E402
from terrazzo.spec.builder import AgentBuilder  # noqa: E402
from terrazzo.spec.cluster import Cluster  # noqa: E402
from terrazzo.spec.sla import Sla  # noqa: E402
from terrazzo.spec.workload import Workload  # noqa: E402

DEVICES = ["a40", "a100", "l4", "l40s", "h100", "h200", "b200", "mi300x", "mi325x", "gaudi2", "gaudi3", "epyc-9654"]
PREFIX = [{"source": "system_prompt", "name": "bench-sys", "tokens": 2048}]


def agent_with_ops(n_ops: int, prefix: bool = True):
    """bench_plan.py's generated chain, each LLM call (one model per size class) behind a prefix."""
    b = AgentBuilder(f"generated-kv-{n_ops}")
    ids, ops, i = [], 0, 0
    while ops < n_ops:
        node = f"n{i}"
        if i % 5 == 4 and n_ops - ops >= 3:
            b.node(node, "llm", model="llama-3-8b", dtype="fp8", input_tokens=512 + 64 * (i % 3),
                   output_tokens=128, **({"prefix": PREFIX} if prefix else {}))
            ops += 3
        elif i % 5 == 2:
            b.node(node, "embed", tokens=64)
            ops += 1
        else:
            b.node(node, "tool", protocol="python", function="tools:step", latency_s=0.01, cpu_s=0.002)
            ops += 2
        ids.append(node)
        i += 1
    return b.chain(*ids).build()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--tco", action="store_true", help="also the shipped agents' TCO with and without reuse")
    args = parser.parse_args()
    if args.tco:
        from terrazzo.verify.kv_comparison import kv_tco_comparison

        for agent, workload in (("tool-loop-agent", "steady-5rps"), ("tool-loop-agent", "steady-200rps"),
                                ("chat-agent", "chat-sessions")):
            t0 = time.perf_counter()
            kv_tco_comparison(ROOT / f"examples/agents/{agent}.yaml", ROOT / f"examples/workloads/{workload}.yaml",
                              ROOT / "examples/slas/interactive.yaml", ROOT / "examples/clusters/hetero.yaml",
                              echo=True)
            print(f"  ({time.perf_counter() - t0:.1f} s, both plans with their simulations)", flush=True)
    catalog, cluster = load_catalog(), Cluster(devices=DEVICES)
    workload = Workload.model_validate({"arrival": {"rate_per_s": args.rate}})
    sla = Sla.model_validate({"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}})
    print(f"{'ops':>6} {'kv':>8} {'columns':>8} {'build s':>8} {'MILP s':>7} {'status':>8} {'$/h':>9}", flush=True)
    rows = {}
    for n in (int(s) for s in args.sizes.split(",")):
        agent = agent_with_ops(n)
        for reuse in (True, False):
            t0 = time.perf_counter()
            graph = build(agent, workload, sla, cluster, catalog, kv_reuse=reuse)
            t1 = time.perf_counter()
            sol = solve_milp(graph, time_limit_s=600)
            t2 = time.perf_counter()
            columns = sum(1 for o in graph.ops for c in o.candidates if c.feasible)
            rows[n, reuse] = (t1 - t0, t2 - t1, sol.objective_usd_h)
            print(f"{len(graph.ops):>6} {'reuse' if reuse else 'off':>8} {columns:>8} {t1 - t0:>8.2f} {t2 - t1:>7.2f} "
                  f"{sol.status[:8]:>8} {sol.objective_usd_h:>9.2f}", flush=True)
        (b1, m1, u1), (b0, m0, u0) = rows[n, True], rows[n, False]
        print(f"{n:>6}  reuse ÷ off: build {b1 / b0:.2f}×, MILP {m1 / m0:.2f}×, TCO {u1 / u0:.2f}×", flush=True)


if __name__ == "__main__":
    main()
