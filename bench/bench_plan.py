"""Planner solve time for generated agents of 10, 100 and 1,000 granular ops over 12 device types.

    .venv/bin/python bench/bench_plan.py [--sizes 10,100,1000]

Each agent is a chain: every fifth node an LLM call (three granular ops: prefill, decode, aggregated,
of which the MILP keeps one serving variant), the rest tools (lookup + compute) and embeddings. Per size it prints the
time to build and price the planning graph, to solve without an end-to-end deadline, and to solve
again with a deadline 20 % under that plan's latency, so that the latency constraints bind.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.plan.check import check
from terrazzo.plan.from_ir import build
from terrazzo.plan.milp import solve_milp
from terrazzo.spec.builder import AgentBuilder
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

DEVICES = ["a40", "a100", "l4", "l40s", "h100", "h200", "b200", "mi300x", "mi325x", "gaudi2", "gaudi3", "epyc-9654"]


def agent_with_ops(n_ops: int):
    b = AgentBuilder(f"generated-{n_ops}")
    ids, ops, i = [], 0, 0
    while ops < n_ops:
        node = f"n{i}"
        if i % 5 == 4 and n_ops - ops >= 3:
            b.node(node, "llm", model="llama-3-8b" if i % 2 else "llama-3-70b", dtype="fp8",
                   input_tokens=512 + 64 * (i % 3), output_tokens=128)
            ops += 3
        elif i % 5 == 2:
            b.node(node, "embed", tokens=64)
            ops += 1
        else:  # the IR splits a tool call into lookup and compute
            b.node(node, "tool", protocol="python", function="tools:step", latency_s=0.01, cpu_s=0.002)
            ops += 2
        ids.append(node)
        i += 1
    return b.chain(*ids).build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    catalog = load_catalog()
    cluster = Cluster(devices=DEVICES)
    workload = Workload.model_validate({"arrival": {"rate_per_s": 20}})
    print(f"{'ops':>6} {'devices':>7} {'candidates':>10} {'build s':>8} {'solve s':>8} {'SLA-bound solve s':>17} "
          f"{'$/h':>9} {'$/h at SLA':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        agent = agent_with_ops(n)
        t0 = time.perf_counter()
        loose = build(agent, workload, Sla.model_validate({"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}}),
                      cluster, catalog)
        t1 = time.perf_counter()
        free = solve_milp(loose, time_limit_s=600)
        t2 = time.perf_counter()
        # a deadline 20 % under the unconstrained optimum's end-to-end latency, so latency rows bind
        e2e = check(loose, free.assignment).e2e_latency_s
        tight = replace(loose, deadline_s=0.8 * e2e)
        bound = solve_milp(tight, time_limit_s=600)
        t3 = time.perf_counter()
        candidates = sum(1 for o in loose.ops for c in o.candidates if c.feasible)
        print(f"{len(loose.ops):>6} {len(DEVICES):>7} {candidates:>10} {t1 - t0:>8.2f} {t2 - t1:>8.2f} "
              f"{t3 - t2:>17.2f} {free.objective_usd_h:>9.2f} {bound.objective_usd_h:>10.2f}")

if __name__ == "__main__":
    main()
