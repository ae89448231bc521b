"""Simulator throughput: simulated requests per wall-clock second for the voice agent at 1,000 requests/s
over 10 simulated minutes, and the peak memory it takes; or Vidur's reference scenario (one CodeLlama-34B
replica on A100 TP2, 10,000 requests) with the chunked scheduler and the previous one side by side, priced by
Vidur's own A100 profile (the check: bench/vidur_cost.py) and by two earlier pinned cost sources.

    .venv/bin/python bench/bench_sim.py [--rate 1000] [--duration 600] [--seed 0] [--tracemalloc]
    .venv/bin/python bench/bench_sim.py --scenario vidur [--requests 10000] [--seed 0] [--vidur-trace CSV]

The voice agent is planned at the benchmark's rate first (terrazzo.plan.planner.plan, a workload with
rate_per_s = --rate), so the simulated fleet is the one the planner would buy for that load. Wall time
counts the simulation only (not planning, not the report). Peak memory is the process's peak resident
set (getrusage), next to the same figure before the run; --tracemalloc adds a second run that measures
the Python heap's peak (slower, as tracing slows allocation).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from terrazzo.sim.results import report_from
from terrazzo.sim.sim_inputs import model_from_specs
from terrazzo.sim.simulation import SimConfig, Simulation
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.replan import verified_plan as plan

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # vidur_scenario.py beside this file
AGENT, SLA, CLUSTER = (ROOT / "examples/agents/voice-agent.yaml", ROOT / "examples/slas/interactive.yaml",
                       ROOT / "examples/clusters/hetero.yaml")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def vidur(requests: int, seed: int, trace: Path | None = None) -> None:
    """Vidur's scenario (bench/vidur_scenario.py) under each scheduler, on the same request stream: drawn
    with the splitwise-conversation statistics, or with `trace` (Vidur's splitwise_conv.csv) Vidur's own."""
    import numpy as np
    import vidur_scenario as V

    from terrazzo.cost.llm import decode_step

    scenario = V.Scenario(requests=requests, seed=seed)
    stream = V.stream(scenario) if trace is None else V.vidur_stream(trace, scenario)
    isl, osl = np.array([r[1] for r in stream]), np.array([r[2] for r in stream])
    print(("Vidur's own stream (seed 42) from " + str(trace) + "\n") if trace else "", end="")
    print(f"Vidur scenario: CodeLlama-34B fp16, A100-80GB TP2 × 1, {requests:,} requests, Poisson "
          f"{scenario.rate_per_s:g}/s, prompt median {np.median(isl):.0f} (mean {isl.mean():.0f}), output median "
          f"{np.median(osl):.0f} (mean {osl.mean():.0f}), ≤ {scenario.max_tokens} tokens")
    rows = []
    scheds = V.schedulers(scenario)
    profiled, measured = V.profiled_cost(), V.measured_cost()
    runs: list[tuple[str, Any, Any, str]] = [
        (f"{name}, Vidur's profile", sched, profiled, f"cost: {profiled.source}") for name, sched in scheds.items()]
    runs += [(f"{name}, pinned roofline", sched, V.cost(), f"cost: roofline, {V.PINNED}")
             for name, sched in scheds.items()]
    runs.append(("chunked, measured kernels", scheds["chunked"], measured,
                 f"cost: {decode_step(measured.dep, 32, 1024).source}"))
    for name, sched, llm, note in runs:
        run = V.run(scenario, sched, stream, llm)
        pct = {m: np.nanpercentile(getattr(run, m), [50, 90, 99]) for m in ("ttft_s", "tbt_s", "e2e_s")}
        rows.append((name, run, pct))
        print(f"\n{name}: {sched.label}" + (f"\n  {note}" if note else ""))
        print(f"  {requests:,} requests in {run.wall_s:.2f} s wall: {requests / run.wall_s:,.0f} simulated requests/s "
              f"({requests / run.wall_s / V.VIDUR['requests_per_wall_s']:.0f}× Vidur's "
              f"{V.VIDUR['requests_per_wall_s']:g}), {run.events / requests:.1f} events/request, "
              f"{run.preemptions} preemptions")
        for m, label in (("ttft_s", "TTFT"), ("tbt_s", "TBT"), ("e2e_s", "E2E")):
            p50, p90, p99 = pct[m]
            print(f"  {label:4} p50 {p50:.3f} s  p90 {p90:.3f} s  p99 {p99:.3f} s")
    print("\nagainst Vidur (TTFT p50 0.335 s, E2E p50 7.3 s):")
    for name, run, pct in rows:
        print(f"  {name:40} TTFT p50 {pct['ttft_s'][0]:.3f} s ({pct['ttft_s'][0] / V.VIDUR['ttft_p50_s']:.2f}×)  "
              f"E2E p50 {pct['e2e_s'][0]:.2f} s ({pct['e2e_s'][0] / V.VIDUR['e2e_p50_s']:.2f}×)  "
              f"speed {requests / run.wall_s:,.0f} req/s "
              f"({requests / run.wall_s / V.VIDUR['requests_per_wall_s']:.0f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("voice", "vidur"), default="voice")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--requests", type=int, default=10_000, help="vidur: requests in the stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vidur-trace", type=Path, help="vidur: replay Vidur's own request stream from its "
                        "data/processed_traces/splitwise_conv.csv (a checkout of microsoft/vidur)")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure the Python heap's peak")
    args = parser.parse_args()
    if args.scenario == "vidur":
        vidur(args.requests, args.seed, args.vidur_trace)
        return

    cluster, catalog = load_cluster(CLUSTER)
    agent = load_agent(AGENT, catalog)
    sla = load_sla(SLA, agent)
    workload = Workload.model_validate({"name": f"poisson-{args.rate:g}", "arrival": {"rate_per_s": args.rate}})
    planned = plan(agent, workload, sla, cluster, catalog)
    model = model_from_specs(planned.to_json(), agent, workload, sla, cluster, catalog)
    fleet = ", ".join(f"{o.name} {o.label}" for o in model.ops.values())
    print(f"voice agent planned at {args.rate:g} req/s: {fleet}; ${planned.usd_h:,.2f}/h")
    config = SimConfig(duration_s=args.duration, rate_per_s=args.rate, seed=args.seed)

    before = peak_rss_mib()
    sim = Simulation(model, config)
    t0, c0 = time.perf_counter(), time.process_time()
    sim.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = peak_rss_mib()
    report = report_from(sim)
    print(f"{sim.arrived:,} requests ({args.duration:g} simulated s) in {wall:.1f} s wall: "
          f"{sim.arrived / wall:,.0f} simulated requests/s, {sim.env.events / wall:,.0f} events/s, "
          f"{args.duration / wall:.1f} simulated s per wall s ({cpu:.1f} s of CPU: "
          f"{sim.arrived / cpu:,.0f} requests per CPU s)")
    print(f"peak RSS {after:.0f} MiB (before the run: {before:.0f} MiB)")
    print(f"SLA {'met' if report.meets_sla else 'missed'}: attainment {report.attainment:.2%}, E2E p99 "
          f"{report.e2e.p99_s:.2f} s; " + ", ".join(f"{p.op} {p.utilisation:.0%}" for p in report.pools))
    heap = ""
    if args.tracemalloc:
        tracemalloc.start()
        Simulation(model, config).run()
        heap = f" | {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB"
        tracemalloc.stop()
        print(f"Python heap peak (tracemalloc, second run){heap[2:]}")
    print("\nmarkdown row:")
    print(f"| {args.rate:g} req/s × {args.duration:g} s | {sim.arrived:,} | {sim.env.events:,} | {wall:.1f} | "
          f"{sim.arrived / wall:,.0f} | {after:.0f} (before: {before:.0f}){heap} | {platform.python_version()} |")


if __name__ == "__main__":
    main()
