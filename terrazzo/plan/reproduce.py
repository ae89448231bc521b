"""The paper's evaluation (§5): cost per request of every prefill::decode device pair, against H100::H100.

Each pair serves the LLM disaggregated: the cheapest prefill configuration on the first device that
meets TTFT (with the KV transfer to the decode pool counted in it), and the cheapest decode
configuration on the second that meets TBT. Pools are sized continuously (replicas = demand ÷
per-replica rate), as the paper does for a continuous workload; offline mode drops the latency
limits and keeps memory. Cost per request is replica $/h ÷ requests/s, summed over both pools.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from itertools import product
from typing import Literal

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.candidates import Candidate, llm_candidates
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.cost.network import scale_out_link
from terrazzo.cost.serving_model import spread_for
from terrazzo.spec.cluster import Fabric

PAPER_DEVICES = ("a40", "a100-80gb-sxm", "gaudi3", "mi300x", "h100-sxm", "b200")
PAPER_TCO = "paper-2507.19635"
REFERENCE = ("h100-sxm", "h100-sxm")
INTERACTIVE_TTFT_S, INTERACTIVE_TBT_S = 0.250, 0.020
Mode = Literal["interactive", "offline"]
MODES: tuple[Mode, ...] = ("interactive", "offline")


@dataclass(frozen=True)
class Config:
    model: str
    dtype: str
    isl: int
    osl: int
    mode: Mode

    @property
    def label(self) -> str:
        return f"{self.model} {self.dtype} {self.isl}/{self.osl} {self.mode}"


PAPER_CONFIGS = tuple(
    Config(m, d, isl, osl, mode)
    for m, d, (isl, osl), mode in product(
        ("llama-3-8b", "llama-3-70b"), ("fp16", "fp8"), ((512, 4096), (4096, 512)), MODES,
    )
)


@dataclass(frozen=True)
class PairResult:
    config: Config
    prefill_device: str
    decode_device: str
    prefill: Candidate | None
    decode: Candidate | None
    kv_transfer_s: float
    usd_per_request: float
    reason: str = ""

    @property
    def feasible(self) -> bool:
        return not self.reason

    @property
    def pair(self) -> str:
        return f"{self.prefill_device}::{self.decode_device}"


def _usd_per_request(c: Candidate) -> float:
    return c.usd_h / 3600 / c.requests_per_s


def _cheapest(cands: list[Candidate], phase: str, limit_s: float | None, extra_s: float = 0.0) -> Candidate | None:
    ok = [c for c in cands if c.phase == phase and c.requests_per_s > 0 and "GB per device" not in c.reason
          and (c.feasible or limit_s is None) and (limit_s is None or c.latency_s + extra_s <= limit_s)]
    return min(ok, key=_usd_per_request) if ok else None


def evaluate_config(catalog: Catalog, config: Config, devices: tuple[str, ...] = PAPER_DEVICES,
                    fabric: Fabric | None = None) -> list[PairResult]:
    """All prefill::decode pairs of `devices` for one configuration."""
    fabric = fabric or Fabric()
    tco = catalog.tco_profile(PAPER_TCO)
    interactive = config.mode == "interactive"
    ttft = INTERACTIVE_TTFT_S if interactive else None
    tbt = INTERACTIVE_TBT_S if interactive else None
    per_device = {
        d: llm_candidates(catalog, config.model, config.dtype, config.isl, config.osl, [d], tco, fabric, ttft, tbt)
        for d in devices
    }
    kv_bytes = config.isl * kv_bytes_per_token(catalog.model(config.model), config.dtype)
    out = []
    for p, d in product(devices, devices):
        link_bw = min(scale_out_link(catalog.device(x), fabric).bw_bytes_s for x in (p, d))
        transfer_s = fabric.scale_out_latency_s + kv_bytes / link_bw
        pre = _cheapest(per_device[p], "prefill", ttft, transfer_s)
        dec = _cheapest(per_device[d], "decode", tbt)
        reason = ""
        if pre is None:
            reason = f"no {p} prefill meets TTFT {ttft * 1e3:g} ms with a {transfer_s * 1e3:.1f} ms KV transfer" \
                if ttft else f"{config.model} does not fit on {p}"
        elif dec is None:
            reason = f"no {d} decode meets TBT {tbt * 1e3:g} ms" if tbt else f"{config.model} does not fit on {d}"
        cost = _usd_per_request(pre) + _usd_per_request(dec) if pre and dec else float("inf")
        out.append(PairResult(config, p, d, pre, dec, transfer_s, cost, reason))
    return out


def benefits(results: list[PairResult]) -> dict[str, float]:
    """TCO benefit of each pair over H100::H100 (cost ratio; 0 where a pair is infeasible)."""
    ref = next(r for r in results if (r.prefill_device, r.decode_device) == REFERENCE)
    return {r.pair: (ref.usd_per_request / r.usd_per_request if r.feasible else 0.0) for r in results}


def _edge_cost(r: PairResult, edge: int) -> float:
    """Cost per request with both phases at one edge (0: p10, 1: p90) of their cross-validated error."""
    total = 0.0
    for c in (r.prefill, r.decode):
        assert c is not None
        spread = spread_for(c.source, c.phase) or (1.0, 1.0)
        total += _usd_per_request(c) * spread[edge]
    return total


def benefit_ranges(results: list[PairResult]) -> dict[str, tuple[float, float]]:
    """Each pair's benefit when its own estimates sit at the p90 (pessimistic) and p10 (optimistic) edge of
    the model's cross-validated error, the H100::H100 reference held at its estimate."""
    ref = next(r for r in results if (r.prefill_device, r.decode_device) == REFERENCE)
    return {r.pair: (ref.usd_per_request / _edge_cost(r, 1), ref.usd_per_request / _edge_cost(r, 0))
            for r in results if r.feasible}


def reproduce(catalog: Catalog, configs: tuple[Config, ...] = PAPER_CONFIGS) -> list[PairResult]:
    return [r for c in configs for r in evaluate_config(catalog, c)]


def to_csv(results: list[PairResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "dtype", "isl", "osl", "mode", "prefill_device", "decode_device", "feasible",
                "usd_per_request", "tco_benefit_vs_h100", "prefill_config", "prefill_ttft_ms", "decode_config",
                "decode_tbt_ms", "decode_batch", "kv_transfer_ms", "reason"])
    by_config: dict[Config, list[PairResult]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)
    for config, rows in by_config.items():
        ben = benefits(rows)
        for r in rows:
            w.writerow([
                config.model, config.dtype, config.isl, config.osl, config.mode, r.prefill_device, r.decode_device,
                r.feasible, f"{r.usd_per_request:.6g}", f"{ben[r.pair]:.4f}",
                r.prefill.label if r.prefill else "", f"{r.prefill.latency_s * 1e3:.2f}" if r.prefill else "",
                r.decode.label if r.decode else "", f"{r.decode.latency_s * 1e3:.2f}" if r.decode else "",
                r.decode.batch if r.decode else "", f"{r.kv_transfer_s * 1e3:.2f}", r.reason,
            ])
    return buf.getvalue()
