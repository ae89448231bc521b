"""What `terrazzo cost` prints: one replica's latencies, batch, throughput, memory and price per token."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import (
    Deployment,
    decode_step,
    decode_tokens_per_s,
    max_batch,
    max_memory_batch,
    mean_decode_context,
    memory_use,
    prefill,
    prefill_tokens_per_s,
)
from terrazzo.cost.serving_model import spread_for
from terrazzo.cost.tco import device_usd_per_hour, usd_per_million_tokens
from terrazzo.errors import CostError


@dataclass(frozen=True)
class CostReport:
    model: str
    device: str
    dtype: str
    isl: int
    osl: int
    tp: int
    pp: int
    ttft_s: float
    ttft_bound: str
    tbt_b1_s: float
    tbt_b1_bound: str
    sla_ttft_s: float
    sla_tbt_s: float
    max_sla_batch: int
    tbt_at_max_batch_s: float | None
    bound_at_max_batch: str | None
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    weights_gb_per_device: float
    kv_gb_per_device: float
    capacity_gb_per_device: float
    replica_usd_h: float
    usd_per_m_output_tokens: float
    usd_per_m_input_tokens: float
    meets_ttft: bool
    tbt_note: str = ""  # why no batch meets the TBT limit, and what would
    engine: str = ""  # the serving engine the estimate is for ("" = roofline, no engine)
    ttft_source: str = ""
    tbt_source: str = ""
    # p10/p90 of measured ÷ predicted time from cross-validation (None: not known for this estimate)
    ttft_spread: tuple[float, float] | None = None
    tbt_spread: tuple[float, float] | None = None

    def _rng(self, value: float, spread: tuple[float, float] | None, inverse: bool = False, fmt: str = ".2f") -> str:
        """'a..b' at the p10/p90 of the model's error (a rate divides by the time ratio)."""
        if spread is None:
            return "error not known (analytic)"
        lo, hi = (value / spread[1], value / spread[0]) if inverse else (value * spread[0], value * spread[1])
        return f"p10..p90 {lo:{fmt}}..{hi:{fmt}}"

    def table(self) -> Table:
        t = Table("quantity", "value", "range (cross-validated error)", "source",
                  title=f"{self.model} {self.dtype} on {self.tp * self.pp}× {self.device} "
                  f"(tp={self.tp}, pp={self.pp}){f', {self.engine}' if self.engine else ''}, "
                  f"ISL {self.isl} / OSL {self.osl}")
        ok = "meets" if self.meets_ttft else "MISSES"
        t.add_row("TTFT (prefill, batch 1)", f"{self.ttft_s * 1e3:.2f} ms, {self.ttft_bound}-bound, "
                  f"{ok} {self.sla_ttft_s * 1e3:g} ms", self._rng(self.ttft_s * 1e3, self.ttft_spread) + " ms",
                  self.ttft_source)
        t.add_row("TBT at batch 1", f"{self.tbt_b1_s * 1e3:.2f} ms, {self.tbt_b1_bound}-bound",
                  self._rng(self.tbt_b1_s * 1e3, self.tbt_spread) + " ms", self.tbt_source)
        if self.max_sla_batch:
            t.add_row(f"largest batch with TBT ≤ {self.sla_tbt_s * 1e3:g} ms",
                      f"{self.max_sla_batch} (TBT {self.tbt_at_max_batch_s * 1e3:.2f} ms, "  # type: ignore[operator]
                      f"{self.bound_at_max_batch}-bound)",
                      self._rng(self.tbt_at_max_batch_s * 1e3, self.tbt_spread) + " ms",  # type: ignore[operator]
                      self.tbt_source)
        else:
            t.add_row(f"largest batch with TBT ≤ {self.sla_tbt_s * 1e3:g} ms", "none (see below)", "", self.tbt_source)
            t.caption = f"no batch: {self.tbt_note}"
        decodes = self.max_sla_batch > 0
        t.add_row("decode tokens/s per replica", f"{self.decode_tokens_per_s:,.0f}" if decodes else "-",
                  self._rng(self.decode_tokens_per_s, self.tbt_spread, inverse=True, fmt=",.0f") if decodes else "",
                  self.tbt_source)
        t.add_row("prefill tokens/s per replica", f"{self.prefill_tokens_per_s:,.0f}",
                  self._rng(self.prefill_tokens_per_s, self.ttft_spread, inverse=True, fmt=",.0f"), self.ttft_source)
        t.add_row("memory per device", f"weights {self.weights_gb_per_device:.1f} GB + "
                  f"KV {self.kv_gb_per_device:.1f} GB of {self.capacity_gb_per_device:.1f} GB usable", "exact",
                  "catalog (model shape, datasheet memory)")
        t.add_row("replica TCO", f"${self.replica_usd_h:.3f}/h", "exact", "TCO profile and catalog prices")
        t.add_row("$/M output tokens (decode)",
                  f"${self.usd_per_m_output_tokens:.4f}" if decodes else "- (no batch meets the TBT limit)",
                  self._rng(self.usd_per_m_output_tokens, self.tbt_spread, fmt=".4f") if decodes else "",
                  self.tbt_source)
        t.add_row("$/M input tokens (prefill)", f"${self.usd_per_m_input_tokens:.4f}",
                  self._rng(self.usd_per_m_input_tokens, self.ttft_spread, fmt=".4f"), self.ttft_source)
        return t


def cost_report(
    catalog: Catalog, model: str, device: str, dtype: str, isl: int, osl: int, tp: int, pp: int,
    ttft_s: float, tbt_s: float, tco: str, engine: EngineVersion | None = None,
) -> CostReport:
    dep = deployment(catalog, model, device, dtype, tp, pp, engine=engine)
    ctx = mean_decode_context(isl, osl)
    pre, step1 = prefill(dep, isl), decode_step(dep, 1, ctx)
    b = max_batch(dep, ctx, tbt_s, peak_context=isl + osl)
    step_b = decode_step(dep, b, ctx) if b else None
    decode_tps = decode_tokens_per_s(dep, b, ctx) if b else 0.0
    prefill_tps = prefill_tokens_per_s(dep, isl)
    mem = memory_use(dep, max(b, 1), isl + osl)
    usd_h = device_usd_per_hour(catalog, dep.device.name, tco).usd_h * dep.devices
    return CostReport(
        model=dep.model.name, device=dep.device.name, dtype=dtype, isl=isl, osl=osl, tp=tp, pp=pp,
        ttft_s=pre.latency_s, ttft_bound=pre.bound, tbt_b1_s=step1.latency_s, tbt_b1_bound=step1.bound,
        sla_ttft_s=ttft_s, sla_tbt_s=tbt_s, max_sla_batch=b,
        tbt_at_max_batch_s=step_b.latency_s if step_b else None, bound_at_max_batch=step_b.bound if step_b else None,
        decode_tokens_per_s=decode_tps, prefill_tokens_per_s=prefill_tps,
        weights_gb_per_device=mem.weights / 1e9, kv_gb_per_device=mem.kv_cache / 1e9,
        capacity_gb_per_device=mem.capacity / 1e9, replica_usd_h=usd_h,
        usd_per_m_output_tokens=usd_per_million_tokens(usd_h, decode_tps),
        usd_per_m_input_tokens=usd_per_million_tokens(usd_h, prefill_tps), meets_ttft=pre.latency_s <= ttft_s,
        tbt_note="" if b else _unattainable(dep, ctx, isl + osl, step1.latency_s, step1.bound, tbt_s, mem.capacity),
        engine=str(dep.engine) if dep.engine else "", ttft_source=pre.source, tbt_source=step1.source,
        ttft_spread=spread_for(pre.source, "prefill"), tbt_spread=spread_for(step1.source, "decode"),
    )


def _unattainable(dep: Deployment, ctx: float, peak_context: int, tbt_b1_s: float, bound: str, tbt_s: float,
                  capacity_bytes: float) -> str:
    """Why no decode batch qualifies: batch 1 is already slower than the limit, or one sequence's KV does
    not fit beside the weights; each with what would change it."""
    if max_memory_batch(dep, peak_context) == 0:
        return (f"one sequence of {peak_context} tokens does not fit in {capacity_bytes / 1e9:.1f} GB per device "
                "beside the weights; raise --tp or --pp, use a smaller --dtype, or shorten --isl/--osl")
    return (f"TBT limit {tbt_s * 1e3:g} ms is unattainable: batch 1 already takes {tbt_b1_s * 1e3:.2f} ms "
            f"({bound}-bound); raise --tbt, raise --tp, or pick a faster device or a smaller --dtype")


def parse_engine(text: str | None) -> EngineVersion | None:
    """'vllm' or 'vllm:0.10.2' → EngineVersion; a name outside the enum is a CostError naming the choices."""
    if not text:
        return None
    name, _, version = text.partition(":")
    try:
        return EngineVersion(Engine(name.strip().lower()), version.strip())
    except ValueError:
        raise CostError(f"unknown engine {name!r}; choose one of {', '.join(e.value for e in Engine)} "
                        "(optionally with :version)") from None
