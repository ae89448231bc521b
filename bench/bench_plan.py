"""`terrazzo plan` end to end beside the MILP alone, and brute force = MILP on reference instances.

    .venv/bin/python bench/bench_plan.py [--sizes 10,100,1000,3000] [--no-reference] [--verify-up-to 3000]

Part 1, speed. Each agent is a chain: every fifth node an LLM call (three granular ops: prefill,
decode, aggregated, of which the MILP keeps one serving variant), the rest tools (lookup + compute)
and embeddings, over 12 device types at 20 req/s under a TTFT/TBT SLA. Per size it prints the time to
build and price the planning graph, the MILP alone (with HiGHS's status and gap), `terrazzo plan
--no-verify` end to end (verify.replan.verified_plan: build, MILP, independent check, the three
baselines) and, up to --verify-up-to ops (default: every size), the whole `terrazzo plan`: the same
plus the simulations that verify it and the re-plans after a miss (rounds, simulated seconds of wall
time, whether the final plan passes its own simulation).

Part 2, exactness. Reference instances (high rate, MoE, inventory, tight SLA, split placement, own and
buy, the shipped agents) are built through the real pipeline; each is solved by the MILP and by brute
force over every candidate the IR priced (tests/plan_brute_force.py), and the gap is printed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from terrazzo.catalog.catalog_loader import load_catalog  # noqa: E402
from terrazzo.cost.tco import HourlyCost  # noqa: E402
from terrazzo.plan.check import check  # noqa: E402
from terrazzo.plan.from_ir import build  # noqa: E402
from terrazzo.plan.milp import solve_milp  # noqa: E402
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp  # noqa: E402
from terrazzo.spec.builder import AgentBuilder  # noqa: E402
from terrazzo.spec.cluster import Cluster  # noqa: E402
from terrazzo.spec.sla import Sla  # noqa: E402
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload  # noqa: E402
from terrazzo.spec.workload import Workload  # noqa: E402
from terrazzo.verify.replan import verified_plan  # noqa: E402
from tests.plan_brute_force import brute_force  # noqa: E402

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


def speed(sizes: list[int], verify_up_to: int) -> None:
    """Per size: build, the MILP alone, `terrazzo plan --no-verify` end to end (build, MILP, independent
    check, baselines) and, up to `verify_up_to` ops, the whole `terrazzo plan` with its simulations."""
    catalog = load_catalog()
    cluster = Cluster(devices=DEVICES)
    workload = Workload.model_validate({"arrival": {"rate_per_s": 20}})
    sla = Sla.model_validate({"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}})
    print(f"{'ops':>6} {'devices':>7} {'columns':>8} {'build s':>8} {'MILP s':>7} {'status':>8} {'gap':>6} "
          f"{'plan --no-verify s':>18} {'plan s':>8} {'sim s':>6} {'rounds':>6} {'passes':>6} {'$/h':>9}", flush=True)
    for n in sizes:
        agent = agent_with_ops(n)
        t0 = time.perf_counter()
        graph = build(agent, workload, sla, cluster, catalog)
        t1 = time.perf_counter()
        sol = solve_milp(graph, time_limit_s=600)
        t2 = time.perf_counter()
        plan = verified_plan(agent, workload, sla, cluster, catalog, verify=False)
        t3 = time.perf_counter()
        full = sim = rounds = passes = "-"
        if n <= verify_up_to:
            checked = verified_plan(agent, workload, sla, cluster, catalog, verify=True)
            full = f"{time.perf_counter() - t3:.2f}"
            sim = f"{sum(r.get('sim_s', 0.0) for r in checked.verification):.2f}"
            rounds = str(sum(1 for r in checked.verification if not r.get("final")))
            passes = "yes" if checked.sim_verified else "no"
            plan = checked
        columns = sum(1 for o in graph.ops for c in o.candidates if c.feasible)
        print(f"{len(graph.ops):>6} {len(DEVICES):>7} {columns:>8} {t1 - t0:>8.2f} {t2 - t1:>7.2f} "
              f"{sol.status[:8]:>8} {sol.gap:>6.1%} {t3 - t2:>18.2f} {full:>8} {sim:>6} {rounds:>6} {passes:>6} "
              f"{plan.usd_h:>9.2f}", flush=True)


def _small(name: str):
    b = AgentBuilder(name)
    if name == "moe":
        b.node("emb", "embed", tokens=48)
        b.node("llm", "llm", model="mixtral-8x7b", dtype="fp8", input_tokens=1200, output_tokens=150)
        return b.chain("emb", "llm").build()
    b.node("tool", "tool", protocol="python", function="tools:step", latency_s=0.01, cpu_s=0.002)
    b.node("llm", "llm", model="llama-3-8b", dtype="fp8", input_tokens={"dist": "lognormal", "mean": 1500, "cv": 0.5},
           output_tokens=120)
    return b.chain("tool", "llm").build()


def _real(agent, rate: float, sla: dict, devices: list[str], **cluster: object) -> tuple[PlanningGraph, PlanningGraph]:
    cat = load_catalog()
    w = Workload.model_validate({"arrival": {"rate_per_s": rate}})
    s = Sla.model_validate(sla)
    c = Cluster.model_validate({"devices": devices, **cluster})
    pruned, full = build(agent, w, s, c, cat), build(agent, w, s, c, cat, prune_candidates=False)
    return replace(pruned, split=False), replace(full, split=False)


def _example(name: str, rate: float) -> tuple[PlanningGraph, PlanningGraph]:
    cluster, cat = load_cluster(ROOT / "examples/clusters/hetero.yaml")
    cluster = cluster.model_copy(update={"devices": ["a40", "gaudi3", "epyc-9654"]})
    agent = load_agent(ROOT / f"examples/agents/{name}.yaml", cat)
    w = load_workload(ROOT / "examples/workloads/steady-5rps.yaml", agent)
    w = w.model_copy(update={"arrival": w.arrival.model_copy(update={"rate_per_s": rate})})
    s = load_sla(ROOT / "examples/slas/interactive.yaml", agent)
    return build(agent, w, s, cluster, cat), build(agent, w, s, cluster, cat, prune_candidates=False)


def _split_instance() -> tuple[PlanningGraph, PlanningGraph]:
    fast = OpCandidate("fast", 1, 1, 1, 0.05, 10.0, 1, 2.5, first_token_s=0.05, hold_s=0.05)
    cheap = OpCandidate("cheap", 1, 1, 1, 0.08, 5.0, 1, 0.8, first_token_s=0.08, hold_s=0.08)
    op = PlanOp("p", "llm.prefill", "n", 1.0, (fast, cheap), first_token_limit_s=0.5, work_tail_ratio=1.1)
    costs = {"fast": HourlyCost("fast", 2.0, 0.5, 0.0), "cheap": HourlyCost("cheap", 0.6, 0.2, 0.0)}
    g = PlanningGraph((op,), (), (), 40.0, None, 0.8, math.inf, costs, {"fast": 50e9, "cheap": 50e9}, 5e-6,
                      ("fast", "cheap"), {"fast": 3, "cheap": 4}, (), "inventory")
    return g, g


def reference_instances() -> list[tuple[str, PlanningGraph, PlanningGraph]]:
    interactive = {"llm_default": {"ttft_s": 0.5, "tbt_s": 0.05}}
    tight = {"llm_default": {"ttft_s": 0.15, "tbt_s": 0.02}}
    out = [
        ("tool+llm 2 req/s, L4", *_real(_small("tool"), 2.0, interactive, ["l4", "epyc-9654"])),
        ("tool+llm 60 req/s (high rate), A40", *_real(_small("tool"), 60.0, interactive, ["a40", "epyc-9654"])),
        ("tool+llm 300 req/s (high rate), H100", *_real(_small("tool"), 300.0, interactive, ["h100", "epyc-9654"])),
        ("tool+llm tight SLA (TTFT 150 ms, TBT 20 ms)", *_real(_small("tool"), 10.0, tight, ["h100", "epyc-9654"])),
        ("MoE mixtral-8x7b 5 req/s", *_real(_small("moe"), 5.0, interactive, ["h100", "epyc-9654"])),
        ("MoE mixtral-8x7b 40 req/s", *_real(_small("moe"), 40.0, interactive, ["mi300x", "epyc-9654"])),
        ("inventory: 16 L4, 2 EPYC at 20 req/s", *_real(_small("tool"), 20.0, interactive, [],
                                                        mode="inventory",
                                                        inventory={"l4": 16, "epyc-9654": 2})),
        ("own and buy: 2 A40 owned, buy more", *_real(_small("tool"), 30.0, interactive, [], mode="own-and-buy",
                                                     inventory={"a40": 2, "epyc-9654": 1}, buy=["a40"])),
        ("split placement under an inventory", *_split_instance()),
        ("rag-support 2 req/s (a40, gaudi3, epyc)", *_example("rag-support", 2.0)),
        ("voice-agent 5 req/s (a40, gaudi3, epyc)", *_example("voice-agent", 5.0)),
    ]
    with_deadline = []
    for name, pruned, full in out[:2]:
        free = solve_milp(replace(pruned, deadline_s=None))
        d = 0.7 * check(pruned, free.assignment).e2e_latency_s
        with_deadline.append((f"{name}, deadline 0.7× its optimum's", replace(pruned, deadline_s=d),
                              replace(full, deadline_s=d)))
    return out + with_deadline


def exactness() -> float:
    print(f"\n{'instance':<48} {'cands':>6} {'MILP $/h':>10} {'brute $/h':>10} {'gap':>8} {'MILP s':>7} {'brute s':>8}")
    worst = 0.0
    for name, pruned, full in reference_instances():
        t0 = time.perf_counter()
        sol = solve_milp(pruned)
        t1 = time.perf_counter()
        brute, _ = brute_force(full)
        t2 = time.perf_counter()
        milp = check(pruned, sol.assignment).usd_h if sol.assignment is not None else math.inf
        gap = 0.0 if milp == brute else abs(milp - brute) / brute
        worst = max(worst, gap)
        cands = sum(len(o.candidates) for o in full.ops)
        print(f"{name:<48} {cands:>6} {milp:>10.4f} {brute:>10.4f} {gap:>8.2%} {t1 - t0:>7.2f} {t2 - t1:>8.2f}")
    print(f"max gap between MILP and brute force: {worst:.6g}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,3000")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--verify-up-to", type=int, default=3000,
                        help="largest size also timed as the whole `terrazzo plan` (with its simulations)")
    args = parser.parse_args()
    speed([int(s) for s in args.sizes.split(",") if s], args.verify_up_to)
    if not args.no_reference:
        exactness()


if __name__ == "__main__":
    main()
