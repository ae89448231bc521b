"""Sim-to-real: a plan's LLM pool on a live vLLM CPU server against the simulator on the same arrivals.

    .venv/bin/python bench/bench_sim_real.py [--profile vllm-profile.yaml] [--requests 300] [--loads 0.2,0.5,0.8,1]
        [--trace examples/traces/azure-sample.csv] [--out DIR]

Without --profile it first runs `terrazzo profile --engine vllm` on the same server (one start-up, which
takes minutes here) and writes DIR/vllm-profile.yaml.

1. The pool: one vLLM replica of the profiled checkpoint on this machine (one replica: the machine has two
   cores, one for vLLM's engine, one for its API server and this load generator), with the scheduler
   settings the profile measured under. Its plan record (engine, version, scheduler, KV blocks) is
   written to DIR/pool-plan.json and read back by the simulator's plan reader (sim_inputs.scheduler_of).
2. Capacity: a closed-loop saturating run (as many users as the server runs sequences) measures
   requests/s; the simulator runs the same closed loop (the same users, the same requests in order).
3. Poisson arrivals at each load (share of the measured capacity) and the replayed trace (rescaled to
   half the capacity): sent open loop to the server, then the same send times and token counts
   simulated. Token counts come from the trace file (Azure LLM inference sample), scaled by --isl-scale
   and --osl-scale so a run takes minutes on two cores. The server's waiting-requests gauge is sampled
   every 0.5 s, and the simulated queue at the same instants.
4. Printed: predicted and measured TTFT, TBT and E2E at p50/p90/p99 with predicted ÷ measured, throughput,
   mean queue and its growth (slope over the run, requests/s).

The simulated pool's service times are the cost model's on the device the vLLM profile defines,
calibrated by its measured points (terrazzo/cost/calibration.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.candidates import deployment
from terrazzo.models.tiny import make_tiny_checkpoint
from terrazzo.profile.profile_command import Options, profile_command
from terrazzo.profile.profile_file import load_profile
from terrazzo.profile.vllm_load import PromptMaker, Timed, closed_loop, failures, metric_sums, open_loop
from terrazzo.profile.vllm_profile import DECODE_S, PREFILL_S, QUEUE_S
from terrazzo.profile.vllm_server import VllmServer, VllmSettings
from terrazzo.sim.engine import Environment
from terrazzo.sim.front_end import FrontEnd, FrontEndCost
from terrazzo.sim.pool_replay import PoolRun, replay
from terrazzo.sim.pools import LlmPool
from terrazzo.sim.service_times import LlmCost
from terrazzo.sim.sim_inputs import scheduler_of
from terrazzo.sim.traces import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "examples/traces/azure-sample.csv"
METRICS = ("ttft_s", "tbt_s", "e2e_s")
QUEUE_EVERY_S = 0.5


@dataclass
class Live:
    """A measured run: per request TTFT/TBT/E2E, the send times, and the sampled queue."""

    recs: list[Timed]
    queue: list[tuple[float, float]]
    engine_s: dict[str, float] | None = None  # vLLM's own mean queue / prefill / decode time per request

    def metric(self, m: str) -> np.ndarray:
        return np.array([getattr(r, m) for r in self.recs])

    @property
    def sent(self) -> np.ndarray:
        return np.array([r.sent_s for r in self.recs])

    @property
    def throughput_rps(self) -> float:
        return len(self.recs) / (max(r.marks[-1][0] for r in self.recs) - self.sent.min())


def pool_record(prof_path: Path) -> dict:
    """The plan's record of the LLM pool the profile measured (v2 fields: engine, version, scheduler)."""
    prof = load_profile(prof_path)
    if not prof.engine.startswith("vllm") or prof.engine_settings is None or prof.llm is None:
        raise SystemExit(f"{prof_path}: not a vLLM profile; write one with `terrazzo profile --engine vllm -o FILE`")
    st = prof.engine_settings
    return {"name": f"{prof.llm.name}.aggregated", "kind": "llm.aggregated", "node": prof.llm.name,
            "model": prof.llm.name, "dtype": prof.llm.dtype, "device": prof.device.name, "tp": 1, "pp": 1,
            "batch": int(st["max_num_seqs"]), "replicas": 1, "engine": "vllm",
            "engine_version": prof.engine.removeprefix("vllm-"),
            "scheduler": {"policy": "chunked", "kv": "paged", "max_num_seqs": int(st["max_num_seqs"]),
                          "max_batched_tokens": int(st["max_batched_tokens"]), "block_size": int(st["block_size"]),
                          "kv_blocks": int(st["kv_blocks"])},
            "frontend_s": st.get("frontend_ms", 0.0) / 1e3, "checkpoint": prof.llm.checkpoint}


class SimPool:
    """The simulator's model of the pool: its cost on the profiled device, its scheduler from the plan, and
    (when the profile measured it) the API server's core in front of it (sim/front_end.py), with this
    load generator's CPU on that core too when `client_on_core` (this one-machine set-up)."""

    def __init__(self, prof_path: Path, record: dict, client_on_core: bool = True) -> None:
        cat = load_catalog([], [prof_path])
        dep = deployment(cat, record["model"], record["device"], record["dtype"], 1, 1)
        self.cost, self.sched = LlmCost(dep), scheduler_of(record, None, record["batch"])
        self.kv_tokens = self.cost.kv_capacity_tokens(record["batch"])
        self.frontend_s = float(record.get("frontend_s", 0.0))
        prof = load_profile(prof_path)
        self.front = FrontEndCost.from_profile(prof.front_end.model_dump() if prof.front_end else None,
                                               client_on_core)

    @property
    def label(self) -> str:
        f = self.front
        if f is None:
            return f"front end {self.frontend_s * 1e3:.1f} ms per request (a fixed delay)"
        return (f"front-end core: {f.request_cpu_s * 1e3:.2f} ms per request, {f.step_cpu_s * 1e3:.3f} ms per step, "
                f"{f.token_cpu_s * 1e3:.3f} ms per token, + {f.latency_s * 1e3:.1f} ms latency ({f.source})")

    def run(self, requests: list[tuple[float, int, int]], sample_at: list[float] = (),  # type: ignore
            users: int | None = None) -> PoolRun:
        """The engine's run on the requests (a closed loop of `users` when given), behind the front-end
        core; without a measured one, each request's TTFT and E2E pass the profile's lone-request
        front-end latency once."""
        env = Environment()
        pool = LlmPool(env, "pool", "aggregated", self.cost, 1, 1, self.sched.max_num_seqs,
                       self.sched.max_batched_tokens, self.kv_tokens, self.sched)
        if self.front is not None:
            return replay(pool, requests, sample_at, FrontEnd(env, pool, self.front), users)
        run = replay(pool, requests, sample_at, users=users)
        run.ttft_s = run.ttft_s + self.frontend_s
        run.e2e_s = run.e2e_s + self.frontend_s
        run.end_s += self.frontend_s
        return run


def lengths(n: int, rng: np.random.Generator, isl_scale: float, osl_scale: float, max_isl: int,
            max_osl: int) -> list[tuple[int, int]]:
    """(prompt, output) pairs drawn from the Azure sample trace's rows, scaled."""
    trace = load_trace(TRACE)
    rows = rng.integers(len(trace), size=n)
    return [(int(min(max(8, round(trace.input_tokens[i] * isl_scale)), max_isl)),
             int(min(max(2, round(trace.output_tokens[i] * osl_scale)), max_osl))) for i in rows]


def _check(recs: list[Timed]) -> None:
    bad = failures(recs)
    if bad:
        raise SystemExit(f"{len(bad)} of {len(recs)} live requests failed: {bad[0]}")


def capacity(srv: VllmServer, pm: PromptMaker, model: str, sim: SimPool, pairs: list[tuple[int, int]],
             users: int) -> tuple[float, float]:
    """Measured and simulated saturation throughput (requests/s)."""
    recs, _wall = closed_loop(srv.base_url, model, [(pm.ids(i), o) for i, o in pairs], users)
    _check(recs)
    done = sorted(r.marks[-1][0] for r in recs)
    skip = len(done) // 10  # the ramp: the first tenth of completions
    measured = (len(done) - 1 - skip) / (done[-1] - done[skip])
    run = sim.run([(0.0, i, o) for i, o in pairs], users=users)
    ends = np.sort(run.arrival_s + run.e2e_s)
    predicted = (len(ends) - 1 - skip) / (ends[-1] - ends[skip])
    return measured, predicted


def compare(srv: VllmServer, pm: PromptMaker, model: str, sim: SimPool, arrivals: list[tuple[float, int, int]]
            ) -> tuple[Live, PoolRun]:
    """Send `arrivals` to the server open loop, then simulate the actual send times and token counts."""
    queue: list[tuple[float, float]] = []
    names = (QUEUE_S, PREFILL_S, DECODE_S)
    before = metric_sums(srv.base_url, names)
    recs = open_loop(srv.base_url, model, [(t, pm.ids(i), o) for t, i, o in arrivals], QUEUE_EVERY_S, queue)
    after = metric_sums(srv.base_url, names)
    _check(recs)
    engine = {m: (after[m + "_sum"] - before[m + "_sum"]) / max(1.0, after[m + "_count"] - before[m + "_count"])
              for m in names}
    live = Live(recs, queue, engine)
    sent = live.sent
    sim_run = sim.run([(float(s), r.isl, r.osl) for s, r in zip(sent, recs, strict=True)], [t for t, _ in queue])
    return live, sim_run


def slope(ts: np.ndarray, ys: np.ndarray) -> float:
    return float(np.polyfit(ts, ys, 1)[0]) if len(ts) >= 3 else math.nan


def table(label: str, live: Live, sim_run: PoolRun) -> list[str]:
    lines = [f"{label}: {len(live.recs)} requests"]
    lines.append(f"  {'metric':6} {'':5} {'predicted':>10} {'measured':>10} {'ratio':>7}")
    for m in METRICS:
        meas, pred = live.metric(m), getattr(sim_run, m)
        for q in (50, 90, 99):
            p, x = float(np.nanpercentile(pred, q)), float(np.nanpercentile(meas, q))
            lines.append(f"  {m[:-2].upper():6} p{q:<4d} {p * 1e3:8.1f}ms {x * 1e3:8.1f}ms {p / x:7.2f}")
    tp_m, tp_p = live.throughput_rps, sim_run.throughput_rps
    lines.append(f"  throughput  {tp_p:8.2f}/s  {tp_m:8.2f}/s {tp_p / tp_m:7.2f}")
    ts = np.array([t for t, _ in live.queue])
    qm = np.array([q for _, q in live.queue])
    qp = sim_run.queue_sampled
    if live.engine_s is not None:  # where a live request's time went, by vLLM's own clocks
        e = live.engine_s
        stream_ms = np.mean([r.e2e_s - r.ttft_s for r in live.recs]) * 1e3
        lines.append(f"  live, mean per request: TTFT {live.metric('ttft_s').mean() * 1e3:.1f} ms, of it in the "
                     f"engine queue {e[QUEUE_S] * 1e3:.1f} + prefill {e[PREFILL_S] * 1e3:.1f} ms; decode "
                     f"{e[DECODE_S] * 1e3:.1f} ms in the engine, {stream_ms:.1f} ms first to last token at the client")
    lines.append(f"  queue mean  {qp.mean():8.2f}    {np.nanmean(qm):8.2f}    "
                 f"(growth {slope(ts, qp):+.2f} vs {slope(ts, qm):+.2f} requests/s)")
    return lines


def p50_ratios(live: Live, sim_run: PoolRun) -> dict[str, float]:
    return {m: float(np.nanpercentile(getattr(sim_run, m), 50) / np.nanpercentile(live.metric(m), 50))
            for m in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=None, help="terrazzo profile --engine vllm -o FILE (default: "
                    "profile the server first)")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint to serve when profiling (default: a tiny "
                    "random-weight Llama, 4 layers × 256)")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--requests", type=int, default=300, help="requests per load level")
    ap.add_argument("--loads", default="0.2,0.5,0.8,1.0")
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--isl-scale", type=float, default=0.25)
    ap.add_argument("--osl-scale", type=float, default=0.125)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omp-threads", type=int, default=None, help="the server's CPU threads (default: vLLM's, every "
                    "core; 1 leaves a core to the engine core, the API server and this client)")
    ap.add_argument("--vllm-python", default=None)
    ap.add_argument("--out", type=Path, default=Path("sim-real-out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        st = load_profile(args.profile).engine_settings or {}
        settings = VllmSettings(max_num_seqs=int(st.get("max_num_seqs", args.max_num_seqs)),
                                max_num_batched_tokens=int(st.get("max_batched_tokens", 2048)),
                                block_size=int(st.get("block_size", 128)),
                                omp_threads=int(st["omp_threads"]) if "omp_threads" in st else args.omp_threads)
        checkpoint = Path(load_profile(args.profile).llm.checkpoint)  # type: ignore[union-attr]
    else:
        settings = VllmSettings(max_num_seqs=args.max_num_seqs, omp_threads=args.omp_threads)
        checkpoint = args.model or Path(make_tiny_checkpoint(args.out / "tiny", hidden=256, layers=4, heads=8,
                                                             kv_heads=4))
    rng = np.random.default_rng(args.seed)
    mk = lambda n: lengths(n, rng, args.isl_scale, args.osl_scale, 1024, 256)  # noqa: E731
    with VllmServer(checkpoint, settings, args.out / "vllm.log", args.vllm_python) as srv:
        print(f"vLLM {srv.version} up in {srv.startup_s:.0f} s, {srv.kv_blocks:,} KV blocks")
        if args.profile is None:
            args.profile = args.out / "vllm-profile.yaml"
            opts = Options.vllm(model=checkpoint, model_name=None if args.model else "tiny-random-llama-l4-h256",
                                vllm_server=srv, command="terrazzo profile --engine vllm (bench/bench_sim_real.py)")
            profile_command(opts, args.profile, Console())
        record = pool_record(args.profile)
        (args.out / "pool-plan.json").write_text(json.dumps({"schema": "terrazzo.plan/v2", "ops": [record]},
                                                            indent=1))
        sim = SimPool(args.profile, record)
        print(f"pool: {record['model']} on {record['device']}, {sim.sched.label}; {sim.label}")
        pm = PromptMaker(srv.base_url, str(checkpoint), args.seed)
        model = str(checkpoint)
        open_loop(srv.base_url, model, [(0.0, pm.ids(i), o) for i, o in mk(16)])  # warm-up
        users = settings.max_num_seqs
        cap_m, cap_p = capacity(srv, pm, model, sim, mk(args.requests), users)
        print(f"capacity (closed loop, {users} users): measured {cap_m:.2f} req/s, predicted "
              f"{cap_p:.2f} req/s, ratio {cap_p / cap_m:.2f}")
        summary = []
        for load in (float(x) for x in args.loads.split(",")):
            rate = load * cap_m
            gaps = rng.exponential(1 / rate, size=args.requests)
            arrivals = [(float(t), i, o) for t, (i, o) in zip(np.cumsum(gaps) - gaps[0], mk(args.requests),
                                                               strict=True)]
            live, sim_run = compare(srv, pm, model, sim, arrivals)
            print("\n".join(table(f"\nPoisson at {load:.0%} of capacity ({rate:.2f} req/s)", live, sim_run)))
            summary.append((f"{load:.0%}", p50_ratios(live, sim_run)))
        trace = load_trace(args.trace).scaled_to(0.5 * cap_m)
        n = min(args.requests, len(trace))
        t0 = trace.arrival_s[0]
        arrivals = [(float(trace.arrival_s[i] - t0),
                     int(min(max(8, round(trace.input_tokens[i] * args.isl_scale)), 1024)),
                     int(min(max(2, round(trace.output_tokens[i] * args.osl_scale)), 256))) for i in range(n)]
        live, sim_run = compare(srv, pm, model, sim, arrivals)
        print("\n".join(table(f"\ntrace {args.trace.name} rescaled to 50 % of capacity", live, sim_run)))
        summary.append(("trace", p50_ratios(live, sim_run)))
    print("\np50 predicted ÷ measured: " + "; ".join(
        f"{k} " + ", ".join(f"{m[:-2].upper()} {v:.2f}" for m, v in r.items()) for k, r in summary))
    print(f"wrote {args.out / 'pool-plan.json'}, {args.out / 'vllm.log'}")


if __name__ == "__main__":
    sys.exit(main())
