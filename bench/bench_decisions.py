"""Fleet decisions side by side: keep-or-buy on the owned A100 + L40S example, buying H200 / MI300X /
B200 compared, the voice agent's cost/latency/energy front, and a 24-hour diurnal day plan (peak fleet
against the autoscaled schedule, with the per-interval lower bound).

    .venv/bin/python bench/bench_decisions.py [--skip front,day]

Full-length simulations (4,000 requests per plan and front point, 3,000 per day-plan interval); the
tests run the same code with shorter ones. Prints ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.compare import compare, options
from terrazzo.verify.day_plan import day_plan, summary
from terrazzo.verify.pareto import front
from terrazzo.verify.replan import verified_plan

ROOT = Path(__file__).resolve().parent.parent
OWNED = ROOT / "examples/owned"


def owned() -> None:
    cluster, cat = load_cluster(OWNED / "owned-a100-l40s.yaml")
    agent = load_agent(OWNED / "coding-agent.yaml", cat)
    wl, sla = load_workload(OWNED / "coding-15rps.yaml", agent), load_sla(OWNED / "coding-sla.yaml", agent)
    t = time.perf_counter()
    plan = verified_plan(agent, wl, sla, cluster, cat)
    fleet = plan.fleet
    assert fleet is not None
    print(f"owned A100+L40S, coding agent at {plan.rate_per_s:g} req/s: TCO ${plan.usd_h:.2f}/h = "
          + " + ".join(f"{label} {v:.2f}" for label, v in fleet.rows())
          + f"; idle owned {fleet.idle_owned()}; capex ${fleet.capex_usd:,.0f}; "
            f"p{plan.percentile:g} simulated {plan.verification[-1]['e2e_at_sla_s']:.2f} s "
            f"({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    rows = compare(agent, wl, options([("owned", cluster, cat)], [("sla", sla)], [], ["h200", "mi300x", "b200"]))
    print(f"compare --buy h200,mi300x,b200 ({time.perf_counter() - t:.1f} s):")
    cheapest = rows[0].plan.usd_h if rows[0].plan else float("nan")
    for r in rows:
        p = r.plan
        if p is None:
            print(f"  {r.option.label}: infeasible: {r.error}")
            continue
        print(f"  {r.option.label:14s} TCO ${p.usd_h:6.2f}/h ({p.usd_h / cheapest:.2f}× the cheapest) capex "
              f"${p.fleet.capex_usd if p.fleet else 0:>10,.0f}  devices {r.devices}  p99 {r.p99_s:.2f} s  "
              f"{p.energy_j_per_request:,.0f} J/request  SLA {'met' if r.meets_sla else 'missed'}")


def voice_front() -> None:
    cluster, cat = load_cluster(ROOT / "examples/clusters/hetero.yaml")
    agent = load_agent(ROOT / "examples/agents/voice-agent.yaml", cat)
    wl = load_workload(ROOT / "examples/workloads/steady-200rps.yaml", agent)
    t = time.perf_counter()
    pts = front(agent, wl, load_sla(ROOT / "examples/slas/interactive.yaml", agent), cluster, cat,
                ("cost", "latency", "energy"))
    print(f"voice agent front at 200 req/s: {len(pts)} points, all met in simulation: "
          f"{all(p.plan.sim_verified for p in pts)} ({time.perf_counter() - t:.1f} s)")
    c0 = pts[0].plan.usd_h
    for i, p in enumerate(pts, 1):
        last = p.plan.verification[-1]
        print(f"  {i:2d}  ${p.plan.usd_h:7.2f}/h ({p.plan.usd_h / c0:.2f}×)  E2E mean {p.plan.e2e_latency_s:5.2f} s  "
              f"p99 sim {last['e2e_at_sla_s']:5.2f} s  {p.plan.energy_j_per_request:5.0f} J/request  "
              f"{p.plan.power_kw:5.1f} kW")


def day() -> None:
    cluster, cat = load_cluster(ROOT / "examples/clusters/hetero.yaml")
    agent = load_agent(ROOT / "examples/agents/voice-agent.yaml", cat)
    path = ROOT / "examples/workloads/diurnal-voice.yaml"
    t = time.perf_counter()
    plan = day_plan(agent, load_workload(path, agent), load_sla(ROOT / "examples/slas/interactive.yaml", agent),
                    cluster, cat, path.parent)
    rates = [iv.rate_per_s for iv in plan.intervals]
    print(f"day plan, voice agent, 24 × 1 h, {min(rates):g}–{max(rates):g} req/s "
          f"(peak/trough {max(rates) / min(rates):.1f}×) ({time.perf_counter() - t:.1f} s):")
    print("  " + summary(plan))
    worst = max(plan.intervals, key=lambda iv: iv.e2e_at_sla_s or 0.0)
    print(f"  schedule ÷ peak fleet {plan.schedule_usd / plan.peak_usd:.3f}; schedule ÷ lower bound "
          f"{plan.schedule_usd / plan.lower_bound_usd:.3f}; worst interval p99 {worst.e2e_at_sla_s:.2f} s at "
          f"{worst.start_s / 3600:g} h; devices held {min(sum(iv.devices.values()) for iv in plan.intervals)}–"
          f"{max(sum(iv.devices.values()) for iv in plan.intervals)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", default="", help="comma-separated: owned,front,day")
    skip = set(ap.parse_args().skip.split(","))
    for name, fn in (("owned", owned), ("front", voice_front), ("day", day)):
        if name not in skip:
            fn()


if __name__ == "__main__":
    main()
