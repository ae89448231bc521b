"""Vidur's reference scenario, for the simulator: CodeLlama-34B fp16 on one A100-80GB TP2 replica,
Sarathi-style chunked prefill (chunk 512, batch cap 128), Poisson arrivals at 2 requests/s (gaps capped
at three mean gaps, as Vidur's generator caps them), lengths
with the splitwise-conversation statistics (median prompt 1,020, median output 129, at most 4,096
tokens in all), 10,000 requests.

The check itself prices the replica by Vidur's own A100 profile of this model (`profiled_cost`,
bench/vidur_cost.py: its linear, element-wise and all-reduce figures, summed the way its predictor sums
them; attention from the closest measured source, as Vidur's own attention table could not be read), so
that it runs on the inputs Vidur's figures came from and measures the scheduler. Two earlier cost
sources stay beside it, also pinned so that they do not move with the catalog: `cost`, the A100's
datasheet peaks with the NVIDIA-GPU prefill and decode efficiencies as the catalog had them at commit
3fee923 (terrazzo/catalog/data/efficiency.yaml, "derived: docs/cost-model.md#efficiency-defaults"),
without any profile calibration; and `measured_cost`, vLLM's own kernels measured on an A100-SXM
(AIConfigurator's vLLM 0.14.0 tables) plus the fitted NVIDIA per-step overhead.

Lengths: bench/data/splitwise_conv_stats.json holds quantiles of Vidur's copy of the trace in eight
bins of prompt length (prompt and output are strongly related in it: ~1,000-token prompts get ~400
tokens, ~4,000-token ones ~50). A request draws a bin, then its prompt and its output from that bin's
quantiles; pairs over 4,096 tokens shrink both parts in proportion, as Vidur's trace length
generator does with `max_tokens`.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vidur_cost import VidurProfileCost  # beside this file

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.catalog_schema import Efficiency
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import Deployment
from terrazzo.sim.engine import Environment
from terrazzo.sim.pool_replay import PoolRun, replay
from terrazzo.sim.pools import LlmPool
from terrazzo.sim.schedulers import CHUNKED, PAGED, IterationCost, Scheduler
from terrazzo.sim.service_times import LlmCost
from terrazzo.spec.cluster import Fabric

STATS = Path(__file__).parent / "data" / "splitwise_conv_stats.json"
PINNED = "pinned: catalog efficiency.yaml nvidia-gpu at commit 3fee923, derived: docs/cost-model.md#efficiency-defaults"
PREFILL_EFF = Efficiency(compute=0.65, memory=0.8, network=0.8, static_latency_s=0.002, source=PINNED)
DECODE_EFF = Efficiency(compute=0.5, memory=0.8, network=0.8, static_latency_s=0.001, source=PINNED)
MEASURED_VLLM = "0.14.0"  # the vLLM release AIConfigurator measured on A100-SXM (aiconfigurator-core 0.12.0)
# Vidur's figures for this scenario (the issue that asked for the benchmark): TTFT p50 0.335 s,
# E2E p50 7.3 s, 216 simulated requests per wall-second.
VIDUR = {"ttft_p50_s": 0.335, "e2e_p50_s": 7.3, "requests_per_wall_s": 216.0}


@dataclass(frozen=True)
class Scenario:
    requests: int = 10_000
    rate_per_s: float = 2.0
    # Vidur's "Poisson" gaps are exponential draws capped at 3 mean gaps (vidur/request_generator/
    # poisson_request_interval_generator.py at 7d47513, max_interval = 3 / qps): the mean gap is
    # (1 − e⁻³) / rate, 5 % more arrivals than the nominal rate. None: uncapped.
    max_gap_mean_gaps: float | None = 3.0
    max_tokens: int = 4096
    chunk_tokens: int = 512
    batch_cap: int = 128
    seed: int = 0


def splitwise_lengths(n: int, max_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    stats = json.loads(STATS.read_text())
    levels = np.asarray(stats["quantile_levels"])
    weights = np.array([b["requests"] for b in stats["bins"]], dtype=float)
    which = rng.choice(len(weights), size=n, p=weights / weights.sum())
    u, v = rng.random(n), rng.random(n)
    isl, osl = np.empty(n), np.empty(n)
    for i, b in enumerate(stats["bins"]):
        m = which == i
        isl[m] = np.interp(u[m], levels, b["prompt_quantiles"])
        osl[m] = np.interp(v[m], levels, b["output_quantiles"])
    isl, osl = np.maximum(np.rint(isl), 1).astype(int), np.maximum(np.rint(osl), 1).astype(int)
    over = np.maximum(isl + osl - max_tokens, 0)
    total = isl + osl
    isl = np.maximum(isl - np.ceil(over * isl / total).astype(int), 1)
    osl = np.maximum(osl - np.ceil(over * osl / total).astype(int), 1)
    return isl, osl


def stream(s: Scenario) -> list[tuple[float, int, int]]:
    rng = np.random.default_rng(s.seed)
    gaps = rng.exponential(1.0 / s.rate_per_s, size=s.requests)
    if s.max_gap_mean_gaps is not None:
        gaps = np.minimum(gaps, s.max_gap_mean_gaps / s.rate_per_s)
    isl, osl = splitwise_lengths(s.requests, s.max_tokens, rng)
    return list(zip(np.cumsum(gaps).tolist(), isl.tolist(), osl.tolist(), strict=True))


def vidur_stream(trace_csv: Path, s: Scenario, seed: int = 42) -> list[tuple[float, int, int]]:
    """Vidur's own request stream for this scenario, request for request, from its copy of the trace
    (data/processed_traces/splitwise_conv.csv in a checkout of microsoft/vidur; nothing of it is kept
    here). It repeats what Vidur's synthetic generator does at its default seed 42 (7d47513,
    vidur/request_generator/): the trace's pairs over `max_tokens` shrunk in proportion (each part less
    ⌈excess × its share⌉, at least 1), the rows shuffled as pandas' `sample(frac=1, random_state=42)`
    shuffles them (numpy's legacy RandomState(42) permutation), the first `requests` taken, and gaps
    −ln(1 − u) / rate capped at 3 mean gaps, u from Python's `random` seeded 42."""
    with trace_csv.open(newline="") as f:
        rows = [(int(float(r["num_prefill_tokens"])), int(float(r["num_decode_tokens"]))) for r in csv.DictReader(f)]
    p, d = np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows], dtype=float)
    total = p + d
    excess = np.clip(total - s.max_tokens, 0, None)
    p = np.clip(p - np.ceil(excess * (p / total)), 1, None).astype(int)
    d = np.clip(d - np.ceil(excess * (d / total)), 1, None).astype(int)
    order = np.random.RandomState(seed).permutation(len(rows))[: s.requests]
    draws = random.Random(seed)
    cap = (s.max_gap_mean_gaps or math.inf) / s.rate_per_s
    out, t = [], 0.0
    for i in order:
        t += min(-math.log(1.0 - draws.random()) / s.rate_per_s, cap)
        out.append((t, int(p[i]), int(d[i])))
    return out


def cost() -> LlmCost:
    cat = load_catalog([])
    dep = Deployment(model=cat.model("codellama-34b"), device=cat.device("a100-80gb-sxm"), dtype="fp16",
                     prefill_eff=PREFILL_EFF, decode_eff=DECODE_EFF, fabric=Fabric(), tp=2, pp=1)
    return LlmCost(dep)


def measured_cost() -> LlmCost:
    """The same replica priced by measured vLLM kernels on an A100-SXM (AIConfigurator's vLLM 0.14.0 tables,
    catalog/data/aiconfigurator/a100_sxm_vllm_0.14.0.yaml: GEMMs, attention and all-reduce as vLLM runs
    them), plus the fitted NVIDIA per-step overhead; the source is named on every estimate."""
    cat = load_catalog([])
    return LlmCost(deployment(cat, "codellama-34b", "a100-80gb-sxm", "fp16", 2, 1,
                              engine=EngineVersion(Engine.VLLM, MEASURED_VLLM)))


def profiled_cost() -> VidurProfileCost:
    """The replica priced by Vidur's own profile (bench/vidur_cost.py): the Vidur check's cost source."""
    return VidurProfileCost()


def schedulers(s: Scenario) -> dict[str, Scheduler]:
    """The chunked scheduler Vidur runs (Sarathi, as vLLM V1), and the simulator's previous policy."""
    vllm = EngineVersion(Engine.VLLM)
    return {
        "chunked": Scheduler(policy=CHUNKED, kv=PAGED, max_num_seqs=s.batch_cap, max_batched_tokens=s.chunk_tokens,
                             block_size=16, engine=vllm),
        "prefill-first (previous)": Scheduler(max_num_seqs=s.batch_cap, max_batched_tokens=8192),
    }


def run(s: Scenario, sched: Scheduler, requests: list[tuple[float, int, int]] | None = None,
        llm: LlmCost | VidurProfileCost | None = None) -> PoolRun:
    llm = llm or cost()
    price: IterationCost = llm
    env = Environment()
    pool = LlmPool(env, "codellama-34b@a100x2", "aggregated", price, 1, 1, s.batch_cap, sched.max_batched_tokens,
                   llm.kv_capacity_tokens(s.batch_cap), sched)
    return replay(pool, requests if requests is not None else stream(s))
