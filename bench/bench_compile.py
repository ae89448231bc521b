"""Compile a generated 1,000-node agent through terrazzo's whole IR pipeline and time every stage.

    .venv/bin/python bench/bench_compile.py [--motifs 100] [--cluster examples/clusters/hetero.yaml]

The agent chains `motifs` copies of a 10-node block (memory load, vector lookup, an LLM with a bounded
tool loop behind a branch, a second LLM, a calculator, an embedding, a memory store), so 100 motifs make
1,000 nodes with 100 branches and 100 loops. Models rotate over llama-3-8b, llama-3-70b and mixtral-8x7b.
The plan is the cheapest feasible candidate per op (terrazzo.ir.placement_file.cheapest_plan).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.ir.context import parse_module, print_module
from terrazzo.ir.dialects.node_op import NodeOp
from terrazzo.ir.driver import STAGES, make_pass, pass_context
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.module_graph import structurally_equal
from terrazzo.ir.placement_file import cheapest_plan
from terrazzo.spec.agent import Agent
from terrazzo.spec.builder import AgentBuilder
from terrazzo.spec.spec_loader import load_cluster

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("llama-3-8b", "llama-3-70b", "mixtral-8x7b")


def generate(motifs: int) -> AgentBuilder:
    b = AgentBuilder("bench", f"{motifs} chained 10-node motifs")
    prev: str | None = None
    for i in range(motifs):
        m = f"m{i}_"
        b.node(f"{m}load", "memory_load", store="conversations", data_bytes=8192)
        b.node(f"{m}retrieve", "memory_lookup", index_vectors=1_000_000, dimension=384, k=8, index="hnsw")
        b.node(f"{m}think", "llm", model=MODELS[i % 3], dtype="bf16", input_tokens=1024 + 512 * (i % 2),
               output_tokens=256, join="all")
        b.node(f"{m}route", "branch")
        b.node(f"{m}tool", "tool", protocol="http", endpoint="https://tool.example/api", latency_s=0.2)
        b.node(f"{m}again", "loop", body=f"{m}think", bound=2)
        b.node(f"{m}answer", "llm", model="llama-3-8b", dtype="fp8", input_tokens=2048, output_tokens=128,
               serving="aggregated" if i % 4 == 0 else "auto")
        b.node(f"{m}calc", "tool", protocol="python", function="bench.tools:calc", latency_s=0.001)
        b.node(f"{m}embed", "embed", tokens=64)
        b.node(f"{m}store", "memory_store", store="conversations", data_bytes=2048)
        b.edge(f"{m}load", f"{m}think").edge(f"{m}retrieve", f"{m}think")
        if prev is not None:
            b.edge(prev, f"{m}think")
        b.chain(f"{m}think", f"{m}route")
        b.edge(f"{m}route", f"{m}tool", probability=0.3).edge(f"{m}route", f"{m}answer", probability=0.7)
        b.chain(f"{m}tool", f"{m}again", f"{m}think")
        b.edge(f"{m}again", f"{m}answer")
        b.chain(f"{m}answer", f"{m}calc", f"{m}embed", f"{m}store")
        prev = f"{m}store"
    return b


def timed(rows: list[tuple[str, float, str]], label: str, fn: Callable[[], Any], note: Callable[[Any], str]) -> Any:
    start = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - start, note(out)))
    return out


def ops_of(module: Any) -> str:
    return f"{sum(isinstance(o, NodeOp) for o in module.walk())} ops"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=100)
    parser.add_argument("--cluster", default=str(ROOT / "examples" / "clusters" / "hetero.yaml"))
    args = parser.parse_args()

    rows: list[tuple[str, float, str]] = []
    catalog = load_cluster(args.cluster)[1] if args.cluster else load_catalog()
    builder = generate(args.motifs)
    agent: Agent = timed(rows, "spec: build + validate", lambda: builder.build(catalog),
                         lambda a: f"{len(a.graph.nodes)} nodes, {len(a.graph.edges)} edges")
    timed(rows, "  (AgentGraph.visits alone)", agent.graph.visits, lambda v: f"{len(v)} nodes")
    module = timed(rows, "frontend (incl. visits)", lambda: agent_to_module(agent, catalog), ops_of)
    ctx = pass_context(args.cluster)
    for name in STAGES["partitioned"]:
        if name == "apply-plan":
            ctx.placements = timed(rows, "  (cheapest_plan)", lambda: cheapest_plan(module),
                                   lambda p: f"{len(p.placements)} placed")
        p = make_pass(name)
        timed(rows, name, lambda p=p: p.apply(ctx, module) or module, ops_of)
        timed(rows, "  verify", lambda: module.verify() or module, lambda _: "")
    text = timed(rows, "print (partitioned)", lambda: print_module(module), lambda t: f"{len(t) / 1e6:.1f} MB")
    again = timed(rows, "parse (partitioned)", lambda: parse_module(text), ops_of)
    same = timed(rows, "structural equality", lambda: structurally_equal(module, again), lambda s: str(s))
    assert same and print_module(again) == text

    total = sum(t for label, t, _ in rows if not label.startswith("  ("))
    print(f"terrazzo IR pipeline on a generated {len(agent.graph.nodes)}-node agent ({args.motifs} motifs)")
    print(f"{'stage':38s} {'seconds':>8s}  result")
    for label, t, note in rows:
        print(f"{label:38s} {t:8.3f}  {note}")
    print(f"{'total':38s} {total:8.3f}")


if __name__ == "__main__":
    main()
