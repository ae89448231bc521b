"""The fitted LLM serving model: step time from a step's work and the efficiencies its stack reaches.

One forward step on one device (paper §3.1, with the terms the plain roofline misses; the GEMMs and the
attention kernels each meet their own roofline, one after the other):

    t = (max(gemm/(peak·η_c), weights/(bw·η_w)) + max(attention/(peak16·η_a), kv/(bw·η_kv))) · (1 + λ·log2 tp)
        + step_overhead + sequences · sequence_overhead + allreduces · (α + 2(tp−1)/tp · payload / (link·η_n))

The efficiencies belong to the device's vendor, the serving engine, the engine's version range and the
model's architecture (dense or MoE) together: `fitting.py` fits them on public measurements, bounded to
η ≤ 1, and writes catalog/data/serving_fit.yaml, with the leave-one-source-out residual quantiles that
become every estimate's uncertainty. This module only reads that file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from terrazzo.catalog.catalog_loader import DATA_DIR
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.roofline import Estimate

PRIORS_FILE = DATA_DIR / "serving_priors.yaml"
FIT_FILE = DATA_DIR / "serving_fit.yaml"
FITTED_PREFIX = "fitted:serving_fit.yaml#"
PHASES = ("prefill", "decode", "aggregated")
PARAM_NAMES = ("compute", "attention", "weights", "kv", "step_overhead_s", "sequence_overhead_s", "tp_loss",
               "allreduce_alpha_s", "network")
NO_SPREAD = (1.0, 1.0)


@dataclass(frozen=True)
class StepWork:
    """Work of one forward step on one device of one pipeline stage."""

    gemm_flops: float
    attention_flops: float
    weight_bytes: float
    kv_bytes: float
    allreduces: float  # all-reduces on the step's critical path (two per layer under tp)
    allreduce_bytes: float  # payload of each
    tp: int
    sequences: float  # sequences the step advances (host-side cost per sequence: scheduling, sampling)


@dataclass(frozen=True)
class Peaks:
    """The device figures the step divides by: FLOP/s in the compute dtype and in 16 bit, bytes/s."""

    flops: float
    flops_16: float
    mem_bw: float
    link_bw: float


@dataclass(frozen=True)
class ServingParams:
    """Efficiencies of one (vendor, engine, version range, architecture) group, and the spread of the
    model's cross-validated error for it: per phase, (p10, p90) of measured ÷ predicted time."""

    group: str
    compute: float
    attention: float
    weights: float
    kv: float
    step_overhead_s: float
    tp_loss: float
    allreduce_alpha_s: float
    network: float
    sequence_overhead_s: float = 0.0
    time_ratio: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return FITTED_PREFIX + self.group

    def spread(self, phase: str) -> tuple[float, float]:
        return self.time_ratio.get(phase, NO_SPREAD)


_SCALAR_OPS: tuple[Any, Any, Any] = (math.log2, max, lambda cond, a, b: a if cond else b)


def step_terms(w: Any, peaks: Any, p: Any) -> tuple[Any, Any, Any, Any]:
    """(compute_s, memory_s, comm_s, static_s) of a step; every argument may hold numpy arrays of equal
    length (fitting evaluates all points at once), or plain floats (one estimate: the planner asks for
    ~10^5 of them at 1,000 ops, where numpy's per-call overhead on scalars would dominate)."""
    log2, maximum, where = (np.log2, np.maximum, np.where) if isinstance(w.tp, np.ndarray) else _SCALAR_OPS
    scale = 1.0 + p.tp_loss * log2(maximum(w.tp, 1))
    # GEMMs (weights) and attention (KV cache) are separate kernels run one after the other, each at its own
    # roofline: a large decode batch runs compute-bound GEMMs, then memory-bound attention, and the two add.
    gemm_c, gemm_m = w.gemm_flops / (peaks.flops * p.compute), w.weight_bytes / (peaks.mem_bw * p.weights)
    attn_c, attn_m = w.attention_flops / (peaks.flops_16 * p.attention), w.kv_bytes / (peaks.mem_bw * p.kv)
    core = (maximum(gemm_c, gemm_m) + maximum(attn_c, attn_m)) * scale
    in_compute = (where(gemm_c >= gemm_m, gemm_c, 0.0) + where(attn_c >= attn_m, attn_c, 0.0)) * scale
    in_memory = core - in_compute
    # The resource most of the time is bound by carries the whole serial time (so max(compute, memory) is
    # the step's kernel time); the other reports the time of its own kernels.
    compute_major = in_compute >= in_memory
    compute, memory = where(compute_major, core, in_compute), where(compute_major, in_memory, core)
    ring = where(w.tp > 1, 2.0 * (w.tp - 1) / maximum(w.tp, 1), 0.0)
    alpha = where(w.tp > 1, p.allreduce_alpha_s, 0.0)
    per_allreduce = alpha + ring * w.allreduce_bytes / (peaks.link_bw * p.network)
    static = p.step_overhead_s + p.sequence_overhead_s * w.sequences
    return compute, memory, w.allreduces * per_allreduce, static


def step_estimate(w: StepWork, peaks: Peaks, p: ServingParams, phase: str) -> Estimate:
    compute, memory, comm, static = step_terms(w, peaks, p)
    return Estimate(float(compute), float(memory), float(comm), float(static), p.source, p.spread(phase))


# ------------------------------------------------------------------------------------------ reading data


@lru_cache(maxsize=1)
def priors() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PRIORS_FILE.read_text())
    return data


@lru_cache(maxsize=64)
def expert_imbalance(ep: int) -> float:
    """Busiest-expert FLOPs over the mean under skewed routing, for experts spread over `ep` ranks
    (1: one device holds them all), interpolated in log2(ep) in `priors().expert_imbalance` (measured)."""
    table = priors()["expert_imbalance"]["by_ep"]
    eps = sorted(int(k) for k in table)
    x = math.log2(min(max(ep, eps[0]), eps[-1]))
    return float(np.interp(x, [math.log2(e) for e in eps], [float(table[e]) for e in eps]))


def version_range(engine: Engine, version: str) -> str:
    """The range of `priors().version_ranges` a version falls in (an unknown or unparsable one: the oldest)."""
    ranges: list[str] = priors()["version_ranges"].get(engine.value, [">=0"])
    try:
        v = Version(version)
    except InvalidVersion:
        return ranges[-1]
    return next((r for r in ranges if v in SpecifierSet(r)), ranges[-1])


def default_engine(vendor: str) -> EngineVersion | None:
    entry = priors()["default_engine"].get(vendor)
    return EngineVersion(Engine(entry["engine"]), entry["version"]) if entry else None


def engine_max_batch(engine: Engine) -> int:
    return int(priors()["engine_max_batch"][engine.value]["value"])


ARCHITECTURES = ("dense", "moe", "moe-ep")


def architecture(moe: bool, expert_parallel: bool = False) -> str:
    """dense; moe (experts sharded tensor parallel); moe-ep (experts spread over the ranks, expert
    parallel: other kernel shapes and routing skew between ranks, so its own efficiencies)."""
    return ("moe-ep" if expert_parallel else "moe") if moe else "dense"


def group_key(vendor: str, engine: EngineVersion, moe: bool, expert_parallel: bool = False) -> str:
    return (f"{vendor}/{engine.engine.value}/{version_range(engine.engine, engine.version)}/"
            f"{architecture(moe, expert_parallel)}")


def vendor_key(vendor: str, moe: bool, expert_parallel: bool = False) -> str:
    return f"{vendor}/*/*/{architecture(moe, expert_parallel)}"


@lru_cache(maxsize=4)
def _fit(path: Path = FIT_FILE) -> dict[str, Any]:
    if not path.exists():
        return {"groups": {}, "uncertainty": {}}
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _spreads(vendor: str, engine: Engine) -> dict[str, tuple[float, float]]:
    """Cross-validated time-ratio quantiles for (vendor, engine) per phase, falling back to the vendor's
    and then to all points' where a phase has too few points of its own."""
    unc = _fit()["uncertainty"]
    out: dict[str, tuple[float, float]] = {}
    for phase in PHASES:
        for key in (f"{vendor}/{engine.value}", f"{vendor}/*", "*/*"):
            q = unc.get(key, {}).get(phase) or unc.get(key, {}).get("all")
            if q:
                out[phase] = (float(q[0]), float(q[1]))
                break
    return out


def serving_params(vendor: str, engine: EngineVersion, moe: bool,
                   expert_parallel: bool = False) -> ServingParams | None:
    """Fitted efficiencies for the group, else the vendor's (fallback named in the group); None when the
    vendor has no fit (CPUs, unknown vendors: the plain roofline answers)."""
    groups = _fit()["groups"]
    key = group_key(vendor, engine, moe, expert_parallel)
    used = key if key in groups else vendor_key(vendor, moe, expert_parallel)
    entry = groups.get(used)
    if entry is None:
        return None
    fields = {k: float(entry.get(k, 0.0)) for k in PARAM_NAMES}
    label = used if used == key else f"{used} (no fit for {key})"
    return ServingParams(group=label, time_ratio=_spreads(vendor, engine.engine), **fields)


def spread_for(source: str, phase: str) -> tuple[float, float] | None:
    """The cross-validated (p10, p90) of measured ÷ predicted time behind an estimate's `source`, for a
    phase ("prefill", "decode", "aggregated"); (1, 1) for measured profiles; None where the estimate has
    no fitted part (analytic roofline: its error is not known)."""
    parts = source.split(" + ")
    fitted = [p for p in parts if p.startswith(FITTED_PREFIX)]
    if not fitted:
        return NO_SPREAD if all(p.startswith("profile:") for p in parts) else None
    vendor, engine = fitted[0].removeprefix(FITTED_PREFIX).split("/")[:2]
    unc = _fit()["uncertainty"]
    for key in (f"{vendor}/{engine}", f"{vendor}/*", "*/*"):
        q = unc.get(key, {}).get(phase) or unc.get(key, {}).get("all")
        if q:
            return float(q[0]), float(q[1])
    return None
