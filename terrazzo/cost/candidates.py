"""Candidate configurations per LLM phase: device × TP × PP × batch, priced and checked against limits.

Infeasible candidates are kept, with the reason, so the planner can explain what binds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import TcoProfile
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.aiconfigurator import table_for
from terrazzo.cost.calibration import llm_calibration
from terrazzo.cost.llm import (
    PREFILL_TOKEN_BUDGET,
    Deployment,
    decode_step,
    max_batch,
    mean_decode_context,
    memory_use,
    prefill,
    prefill_share_s,
    valid_tp,
)
from terrazzo.cost.network import scale_up_domain
from terrazzo.cost.roofline import ANALYTIC, Estimate, join_sources, source_of
from terrazzo.cost.serving_model import default_engine, serving_params
from terrazzo.cost.tco import device_usd_per_hour
from terrazzo.errors import CostError
from terrazzo.spec.cluster import Fabric

Phase = Literal["prefill", "decode", "aggregated"]
PREFILL_BATCHES = (1, 2, 4, 8, 16, 32)
# Decode (and aggregated) candidates also at the largest batch whose TBT stays within these shares of
# the limit: long outputs may need faster tokens than the TBT limit to meet an end-to-end percentile.
TBT_SHARES = (1.0, 0.7, 0.5, 0.35)
MAX_PP = 8


@dataclass(frozen=True)
class Candidate:
    """One way to serve a phase. `latency_s` is TTFT (prefill) or TBT (decode) at `batch`;
    `requests_per_s` is one replica's sustained rate; `usd_h` prices the whole replica."""

    phase: Phase
    device: str
    dtype: str
    tp: int
    pp: int
    batch: int
    latency_s: float
    requests_per_s: float
    tokens_per_s: float
    memory_bytes: float
    usd_h: float
    bound: str
    feasible: bool
    reason: str = ""
    source: str = ANALYTIC  # analytic, fitted:<profile> or profile:<profile>#<points> (cost/calibration.py)
    engine: str = Engine.BUILTIN.value  # the serving engine the estimate is for (the plan's pool runs it)
    engine_version: str = ""

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def label(self) -> str:
        return f"{self.device} tp{self.tp} pp{self.pp} b{self.batch}"


def deployment(catalog: Catalog, model: str, device: str, dtype: str, tp: int, pp: int,
               fabric: Fabric | None = None, engine: EngineVersion | None = None) -> Deployment:
    """One replica, priced by the serving model fitted for its vendor and engine (the vendor's default
    engine when `engine` is None, serving_priors.yaml); CPUs and unfitted vendors get the roofline."""
    dev, spec = catalog.device(device), catalog.model(model)
    engine = engine or default_engine(dev.vendor)
    serving = serving_params(dev.vendor, engine, spec.is_moe) if engine and dev.kind != "cpu" else None
    return Deployment(
        model=spec, device=dev, dtype=dtype, tp=tp, pp=pp, fabric=fabric or Fabric(),
        prefill_eff=catalog.efficiency_for(dev.name, "prefill"),
        decode_eff=catalog.efficiency_for(dev.name, "decode"),
        calibration=llm_calibration(catalog, dev.name, spec.name, dtype),
        engine=engine if serving is not None else None, serving=serving,
        kernels=table_for(dev.name, engine) if serving is not None else None,
    )


def parallelisms(catalog: Catalog, model: str, device: str, fabric: Fabric) -> list[tuple[int, int]]:
    """TP within one scale-up domain (as serving engines deploy it), PP across domains."""
    dev, spec = catalog.device(device), catalog.model(model)
    tps = valid_tp(spec, scale_up_domain(dev, fabric))
    return [(tp, pp) for tp in tps for pp in (1, 2, 4, MAX_PP) if pp <= spec.layers]


def llm_candidates(
    catalog: Catalog, model: str, dtype: str, isl: float, osl: float, devices: list[str],
    tco: TcoProfile, fabric: Fabric | None = None, ttft_s: float | None = None, tbt_s: float | None = None,
    price_profile: str | None = None,
) -> list[Candidate]:
    """Every prefill and decode candidate on `devices`, with infeasible ones marked and explained."""
    fabric = fabric or Fabric()
    out: list[Candidate] = []
    for device in devices:
        usd_device_h = device_usd_per_hour(catalog, device, tco, price_profile).usd_h
        for tp, pp in parallelisms(catalog, model, device, fabric):
            try:
                dep = deployment(catalog, model, device, dtype, tp, pp, fabric)
            except CostError as exc:
                out.append(_rejected("prefill", device, dtype, tp, pp, str(exc)))
                continue
            start = len(out)
            out.extend(_prefill(dep, int(isl), ttft_s, usd_device_h * dep.devices))
            out.extend(_decode(dep, isl, osl, tbt_s, usd_device_h * dep.devices))
            out.extend(_aggregated(dep, int(isl), osl, ttft_s, tbt_s, usd_device_h * dep.devices))
            out[start:] = [_sourced(dep, c, int(isl), osl) for c in out[start:]]
    return out


def _sourced(dep: Deployment, c: Candidate, isl: int, osl: float) -> Candidate:
    """The candidate with the source of the estimates behind it (a profile's points, its fit, or analytic)."""
    if dep.calibration is None and dep.prefill_eff.source == dep.decode_eff.source:
        source = source_of(dep.prefill_eff)  # no measured points here: one source for every phase
    elif c.phase == "prefill":
        source = prefill(dep, isl, c.batch).source
    else:
        step = decode_step(dep, c.batch, mean_decode_context(isl, osl)).source
        together = max(1, min(c.batch, PREFILL_TOKEN_BUDGET // max(isl, 1)))
        source = step if c.phase == "decode" else join_sources(prefill(dep, isl, together).source, step)
    engine = dep.engine or EngineVersion(Engine.BUILTIN)  # no fitted engine: a roofline of terrazzo's own
    return replace(c, source=source, engine=engine.engine.value, engine_version=engine.version)


def _rejected(phase: Phase, device: str, dtype: str, tp: int, pp: int, reason: str) -> Candidate:
    return Candidate(phase, device, dtype, tp, pp, 0, float("inf"), 0.0, 0.0, 0.0, 0.0, "n/a", False, reason)


def _prefill(dep: Deployment, isl: int, ttft_s: float | None, usd_h: float) -> list[Candidate]:
    out = []
    for b in PREFILL_BATCHES:
        est = prefill(dep, isl, b)
        mem = memory_use(dep, b, isl, prefill_tokens=isl * b)
        reason = _why_not(est, mem.fits, ttft_s, "TTFT", mem.total, mem.capacity)
        rate = b * dep.pp / est.latency_s
        out.append(Candidate("prefill", dep.device.name, dep.dtype, dep.tp, dep.pp, b, est.latency_s, rate,
                             rate * isl, mem.total, usd_h, est.bound, not reason, reason))
        if reason:
            break  # larger prefill batches are only slower and bigger
    return out


def _batches(largest: Callable[[float | None], int], tbt_s: float | None) -> list[int]:
    """Distinct largest batches within each share of the TBT limit (just the one without a limit)."""
    if tbt_s is None:
        return [largest(None)]
    return list(dict.fromkeys(b for b in (largest(share * tbt_s) for share in TBT_SHARES) if b > 0))


def _decode(dep: Deployment, isl: float, osl: float, tbt_s: float | None, usd_h: float) -> list[Candidate]:
    ctx = mean_decode_context(isl, osl)
    batches = _batches(lambda limit: max_batch(dep, ctx, limit, peak_context=isl + osl), tbt_s)
    if not batches or batches == [0]:
        est = decode_step(dep, 1, ctx)
        mem = memory_use(dep, 1, isl + osl)
        reason = _why_not(est, mem.fits, tbt_s, "TBT", mem.total, mem.capacity)
        return [Candidate("decode", dep.device.name, dep.dtype, dep.tp, dep.pp, 1, est.latency_s, 0.0, 0.0,
                          mem.total, usd_h, est.bound, False, reason)]
    out = []
    for b in batches:
        est = decode_step(dep, b, ctx)
        tokens = b * dep.pp / est.latency_s
        out.append(Candidate("decode", dep.device.name, dep.dtype, dep.tp, dep.pp, b, est.latency_s, tokens / osl,
                             tokens, memory_use(dep, b, isl + osl).total, usd_h, est.bound, True))
    return out


def aggregated_tbt_s(dep: Deployment, isl: int, osl: float, batch: int) -> float:
    """Mean time between tokens when one replica also runs the prefills: every decode step finishes
    batch/osl requests on average, so it also absorbs the (batched) prefill of as many newcomers."""
    step_s = decode_step(dep, batch, mean_decode_context(isl, osl)).latency_s
    return step_s + prefill_share_s(dep, isl, batch) * batch / osl


def _aggregated(dep: Deployment, isl: int, osl: float, ttft_s: float | None, tbt_s: float | None,
                usd_h: float) -> list[Candidate]:
    """Prefill and decode on the same replica (no KV transfer); prefills stretch the decode steps."""
    pre = prefill(dep, isl)
    limit = max_batch(dep, mean_decode_context(isl, osl), None, peak_context=isl + osl)
    if limit == 0 or (ttft_s is not None and pre.latency_s > ttft_s):
        mem = memory_use(dep, 1, isl + osl, prefill_tokens=isl)
        reason = _why_not(pre, mem.fits, ttft_s, "TTFT", mem.total, mem.capacity) or "no memory for a batch"
        return [Candidate("aggregated", dep.device.name, dep.dtype, dep.tp, dep.pp, 1, pre.latency_s, 0.0, 0.0,
                          mem.total, usd_h, pre.bound, False, reason)]
    tbt_at: dict[int, float] = {}  # batch → TBT: the bisections for each TBT share revisit the same batches

    def tbt_of(b: int) -> float:
        if b not in tbt_at:
            tbt_at[b] = aggregated_tbt_s(dep, isl, osl, b)
        return tbt_at[b]

    if tbt_s is not None and tbt_of(1) > tbt_s:
        tbt1 = tbt_of(1)
        return [Candidate("aggregated", dep.device.name, dep.dtype, dep.tp, dep.pp, 1, tbt1, 0.0, 0.0,
                          memory_use(dep, 1, isl + osl).total, usd_h, "compute", False,
                          f"TBT {tbt1 * 1e3:.1f} ms with prefills interleaved > {tbt_s * 1e3:.4g} ms limit")]

    def largest(tbt: float | None) -> int:
        lo, hi = 1, limit
        if tbt is None:
            return limit
        if tbt_of(1) > tbt:
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if tbt_of(mid) <= tbt else (lo, mid - 1)
        return lo

    out = []
    for b in _batches(largest, tbt_s):
        tbt = tbt_of(b)
        tokens = b * dep.pp / tbt
        step = decode_step(dep, b, mean_decode_context(isl, osl))
        out.append(Candidate("aggregated", dep.device.name, dep.dtype, dep.tp, dep.pp, b, tbt, tokens / osl, tokens,
                             memory_use(dep, b, isl + osl).total, usd_h, step.bound, True))
    return out


def _why_not(est: Estimate, fits: bool, limit_s: float | None, what: str, used: float, capacity: float) -> str:
    if not fits:
        return f"needs {used / 1e9:.1f} GB per device, {capacity / 1e9:.1f} GB usable"
    if limit_s is not None and est.latency_s > limit_s:
        return f"{what} {est.latency_s * 1e3:.1f} ms > {limit_s * 1e3:.4g} ms limit ({est.bound}-bound)"
    return ""


def best(cands: list[Candidate], phase: Phase) -> Candidate | None:
    """Cheapest feasible candidate per request served (replica $/h ÷ requests/s)."""
    ok = [c for c in cands if c.phase == phase and c.feasible and c.requests_per_s > 0]
    return min(ok, key=lambda c: c.usd_h / c.requests_per_s) if ok else None


def closest_miss(cands: list[Candidate], phase: Phase) -> Candidate | None:
    """Fastest candidate of a phase among those that fit in memory, to say by how much a limit is missed."""
    fit = [c for c in cands if c.phase == phase and "GB per device" not in c.reason and c.latency_s < float("inf")]
    return min(fit, key=lambda c: c.latency_s) if fit else None
