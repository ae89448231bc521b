"""Plain functions behind `terrazzo simulate` and `terrazzo plan ... --simulate` (the typer app wires them)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import SimError
from terrazzo.sim.kv_lanes import KV_POLICIES
from terrazzo.sim.results import PlanCheck, SimReport, plan_check_from, simulate
from terrazzo.sim.sim_inputs import SimModel, load_model, model_from_plan
from terrazzo.sim.simulation import SimConfig
from terrazzo.sim.traces import load_trace

DEFAULT_DURATION_S = 300.0
CHECK_MIN_REQUESTS = 4000  # enough that the mean latency's 95 % interval is a few per cent wide
CHECK_MIN_DURATION_S = 120.0
CHECK_MAX_DURATION_S = 1800.0


def simulate_command(plan_path: str, rate: float | None, duration_s: float | None, trace: str | None, seed: int,
                     out_dir: str | None, progress: bool, kv_policy: str | None = None,
                     cache_aware: bool = True) -> SimReport:
    """`terrazzo simulate PLAN.json --rate R --duration S | --trace FILE [--seed N] [--out DIR]`.

    Without --trace: Poisson arrivals (or the plan workload's gamma process) at `rate` (default: the
    plan's rate) for `duration_s` (default 300 s). With --trace: the trace's arrivals and token counts,
    rescaled to `rate` when given, for `duration_s` or the trace's span, whichever is shorter. `kv_policy`
    replaces every LLM op's KV policy (recompute, retain, host, disk); `cache_aware` False routes LLM calls
    to the least-loaded replica whatever it holds."""
    model = load_model(plan_path)
    _recheck(model, plan_path)
    if rate is not None and not rate > 0:
        raise SimError(f"--rate must be positive, got {rate:g} requests/s")
    if duration_s is not None and not duration_s > 0:
        raise SimError(f"--duration must be positive, got {duration_s:g} s")
    if kv_policy is not None and kv_policy not in KV_POLICIES:
        raise SimError(f"--kv-policy is {kv_policy!r}; use one of {', '.join(KV_POLICIES)}")
    config = replace(_config(model, rate, duration_s, trace, seed, progress), kv_policy=kv_policy,
                     cache_aware=cache_aware)
    report = simulate(model, config)
    if out_dir:
        write_outputs(report, Path(out_dir))
    return report


def _recheck(model: SimModel, plan_path: str) -> None:
    """Refuse a plan the independent checker rejects against its own inputs (plan/recheck.py); the
    simulated fleet's $/h is its pools', which the checker sized."""
    from terrazzo.plan.recheck import recheck

    verdict = recheck(model.plan, plan_path, Path(plan_path).resolve().parent, SimError).verdict
    if abs(verdict.usd_h - model.usd_h) > 1e-6 * max(1.0, verdict.usd_h):
        raise SimError(f"{plan_path}: its pools cost ${model.usd_h:.4f}/h at catalog prices but the checker prices "
                       f"them ${verdict.usd_h:.4f}/h; please report this")


def _config(model: SimModel, rate: float | None, duration_s: float | None, trace: str | None, seed: int,
            progress: bool) -> SimConfig:
    arrival = model.workload.arrival
    trace_file = trace or (arrival.trace if arrival.process == "trace" else None)
    if trace_file and not trace and not Path(trace_file).is_file():  # a workload's trace: relative to its file
        beside = model.input_paths.get("workload", Path("workload.yaml")).parent / trace_file
        trace_file = str(beside) if beside.is_file() else trace_file
    if trace_file:
        fmt = None if trace else arrival.trace_format
        tr = load_trace(trace_file, fmt)
        span = math.nextafter(tr.span_s * (tr.rate_per_s / rate if rate and tr.rate_per_s else 1.0), math.inf)
        return SimConfig(duration_s=min(duration_s or span, span), rate_per_s=rate, arrival="trace", trace=tr,
                         seed=seed, progress=progress)  # never past the trace's end: no idle tail in the window
    process = "gamma" if arrival.process == "gamma" else "poisson"
    rate = rate if rate is not None else (arrival.rate_per_s or model.rate_per_s)
    if not rate:
        raise SimError("the plan has no arrival rate; pass --rate (requests per second) or --trace FILE")
    return SimConfig(duration_s=duration_s or model.workload.duration_s or DEFAULT_DURATION_S, rate_per_s=rate,
                     arrival=process, cv=arrival.cv, seed=seed, progress=progress)


def check_plan(plan_json: dict[str, Any], tolerance: float, seed: int) -> PlanCheck:
    """Simulate a plan at its planned rate (Poisson) long enough for a tight mean, and compare per op and
    per request with what the plan predicts; `tolerance` is relative (0.2 = ±20 %)."""
    if not 0 < tolerance < 10:
        raise SimError(f"tolerance is a fraction such as 0.2 (±20 %), got {tolerance:g}")
    model = model_from_plan(plan_json, Path.cwd())
    if not model.rate_per_s:
        raise SimError("the plan has no arrival rate to simulate at; plan with a workload that sets rate_per_s")
    duration = min(max(CHECK_MIN_DURATION_S, CHECK_MIN_REQUESTS / model.rate_per_s), CHECK_MAX_DURATION_S)
    report = simulate(model, SimConfig(duration_s=duration, rate_per_s=model.rate_per_s, seed=seed))
    return plan_check_from(report, tolerance)


def write_outputs(report: SimReport, out: Path) -> list[Path]:
    """report.json, requests.csv, llm_calls.csv, latency-cdf.png and utilisation.png under `out`."""
    from terrazzo.sim.sim_figures import latency_cdf, utilisation

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimError(f"cannot create output folder {out}: {exc.strerror}") from None
    figures = [latency_cdf(report, out / "latency-cdf.png"), utilisation(report, out / "utilisation.png")]
    report.figures = [str(f) for f in figures]
    req = report.records.requests
    _csv(out / "requests.csv", ["request", "arrival_s", "e2e_s", "predicted_s", "llm_sla_ok"],
         zip(req["id"].astype(int), req["arrival_s"], req["e2e_s"], req["pred_s"], req["ok"].astype(int),
             strict=True))
    rows: list[tuple] = []
    for node, c in report.records.calls.items():
        rows += zip(c["request"].astype(int), [node] * len(c["request"]), c["arrival_s"], c["ttft_s"], c["tbt_s"],
                    c["isl"].astype(int), c["osl"].astype(int), c["cached"].astype(int), strict=True)
    rows.sort(key=lambda r: (r[0], r[1]))
    _csv(out / "llm_calls.csv", ["request", "node", "arrival_s", "ttft_s", "tbt_s", "input_tokens", "output_tokens",
                                 "cached_tokens"], rows)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return [out / "report.json", out / "requests.csv", out / "llm_calls.csv", *figures]


def _csv(path: Path, header: list[str], rows: Any) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row])
