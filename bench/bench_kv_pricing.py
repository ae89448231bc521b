"""What the cost model says KV reuse is worth, per device: a loop iteration's prefill cold against behind its
resident prefix, and reading that prefix back from host memory or disk instead.

    .venv/bin/python bench/bench_kv_pricing.py [--agent examples/agents/tool-loop-agent.yaml]

For the agent's first LLM node with a prefix, at its last loop iteration (the largest context): the prefix
(shared prompt + the conversation of the earlier calls, spec/prefix.py), the cold prefill of the full input
(cost/llm.prefill), the reuse prefill (cost/kv_reuse_pricing.reuse_prefill), their ratio, and the read-back of the
prefix's KV from each tier (cost/kv_tiers.py) added to the reuse prefill. Model figures, not measurements:
the live and simulated ratios are bench/bench_kv.py's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.kv_reuse_pricing import holding, prefix_kv_bytes, reuse_prefill
from terrazzo.cost.kv_tiers import read_back_s
from terrazzo.cost.llm import prefill
from terrazzo.spec.agent import LlmNode
from terrazzo.spec.prefix import CallTokens, prefix_tokens
from terrazzo.spec.spec_loader import load_agent

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ["h100-sxm", "b200", "gaudi3", "mi300x", "a100-80gb-sxm", "a40", "epyc-9654"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default=str(ROOT / "examples" / "agents" / "tool-loop-agent.yaml"))
    ap.add_argument("--calls", type=int, default=3, help="LLM calls of the request (the loop's iterations)")
    args = ap.parse_args()
    agent = load_agent(args.agent)
    node = next(n for _, n in agent.graph.leaves() if isinstance(n, LlmNode) and n.prefix)
    new_in, out = round(node.input_tokens.expected), round(node.output_tokens.expected)
    history = [CallTokens(new_in, out)] * (args.calls - 1)
    cached = round(prefix_tokens(node, history).total)
    cat = load_catalog()
    kv_bytes = prefix_kv_bytes(cat.model(node.model), node.dtype, cached)
    print(f"{agent.name}/{node.id} ({node.model} {node.dtype}), call {args.calls}: {cached:,} prefix tokens "
          f"({kv_bytes / 1e6:,.0f} MB of KV) + {new_in} new")
    print(f"{'device':<15}{'cold ms':>10}{'reuse ms':>10}{'cold/reuse':>11}{'+host ms':>10}{'+disk ms':>10}"
          f"{'hold 1 s, 5/s':>15}")
    for name in DEVICES:
        dep = deployment(cat, node.model, name, node.dtype, 1, 1)
        cold = prefill(dep, cached + new_in).latency_s
        warm = reuse_prefill(dep, new_in, cached).latency_s
        host = warm + read_back_s(dep.device, "host", kv_bytes)
        disk = warm + read_back_s(dep.device, "disk", kv_bytes)
        share = holding(dep, cached, 1.0, 5.0, cached + new_in + out / 2).replica_share
        print(f"{name:<15}{cold * 1e3:>10.2f}{warm * 1e3:>10.2f}{cold / warm:>10.2f}x{host * 1e3:>10.2f}"
              f"{disk * 1e3:>10.2f}{share:>14.2%}")


if __name__ == "__main__":
    main()
