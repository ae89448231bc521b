"""Pricing KV reuse: a prefill behind a resident prefix, a prefix's KV bytes, holding it, reading it back."""

from __future__ import annotations

import pytest

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.kv_reuse_pricing import (
    holding,
    kv_capacity_bytes,
    prefix_kv_bytes,
    reuse_prefill,
)
from terrazzo.cost.kv_tiers import TIERS, read_back_s, tier_link
from terrazzo.cost.llm import max_memory_batch, prefill
from terrazzo.errors import CostError

CAT = load_catalog()
# fitted + measured kernels (h100), fitted only (a100, gaudi3), plain roofline (a CPU), tensor parallel
DEPLOYMENTS = [("h100-sxm", 1), ("a100-80gb-sxm", 1), ("gaudi3", 1), ("epyc-9654", 1), ("h100-sxm", 4)]


@pytest.mark.parametrize(("device", "tp"), DEPLOYMENTS)
def test_reuse_prefill_is_cheaper_than_cold_and_equal_with_nothing_cached(device: str, tp: int) -> None:
    dep = deployment(CAT, "llama-3-8b", device, "bf16", tp, 1)
    new, cached = 300, 2498
    cold = prefill(dep, new + cached).latency_s
    reused = reuse_prefill(dep, new, cached).latency_s
    assert reused < cold
    # it still reads the whole context, so it costs more than a prompt of the new tokens alone
    assert prefill(dep, new).latency_s < reused
    assert reuse_prefill(dep, 2798, 0).latency_s == cold
    assert reuse_prefill(dep, 300, 0, batch=4).latency_s == prefill(dep, 300, 4).latency_s
    # continuous at zero: one token cached costs what computing it would, within that token's share
    assert reuse_prefill(dep, 2797, 1).latency_s == pytest.approx(cold, rel=2e-3)


@pytest.mark.parametrize(("model", "device", "dtype", "tp"),
                         [("mixtral-8x7b", "h100-sxm", "bf16", 2), ("qwen3-30b-a3b", "h200-sxm", "fp8", 1),
                          ("llama-3-70b", "mi300x", "fp8", 8), ("deepseek-v3", "h200-sxm", "fp8", 8)])
def test_reuse_prefill_prices_the_same_work_as_a_cold_prefill(model: str, device: str, dtype: str, tp: int) -> None:
    """MoE routing skew, expert weights touched and the collectives are the cold prefill's: a call with
    one token cached is priced as that call cold, and caching more of a fixed input only saves."""
    dep = deployment(CAT, model, device, dtype, tp, 1)
    cold = prefill(dep, 2048).latency_s
    assert reuse_prefill(dep, 2047, 1).latency_s == pytest.approx(cold, rel=2e-3)
    times = [reuse_prefill(dep, 2048 - c, c).latency_s for c in (0, 512, 1024, 1536, 2000)]
    assert times == sorted(times, reverse=True) and times[-1] < 0.5 * cold


def test_more_of_a_fixed_input_cached_is_faster() -> None:
    dep = deployment(CAT, "llama-3-8b", "h100-sxm", "bf16", 1, 1)
    full = 4096
    times = [reuse_prefill(dep, full - c, c).latency_s for c in (0, 1024, 2048, 3072, 4000)]
    assert times == sorted(times, reverse=True)


def test_compute_bound_reuse_saves_about_the_gemm_share() -> None:
    """On a compute-bound prefill the saving tracks the GEMM FLOPs skipped: 2·params per cached token."""
    dep = deployment(CAT, "llama-3-8b", "h100-sxm", "bf16", 1, 1)
    new, cached = 256, 3840
    ratio = reuse_prefill(dep, new, cached).latency_s / prefill(dep, new + cached).latency_s
    gemm_ratio = new / (new + cached)
    assert gemm_ratio < ratio < 3 * gemm_ratio  # attention over the full context and overheads keep some


def test_reuse_rejects_an_empty_call() -> None:
    dep = deployment(CAT, "llama-3-8b", "h100-sxm", "bf16", 1, 1)
    with pytest.raises(CostError, match="new_tokens >= 1"):
        reuse_prefill(dep, 0, 100)


def test_prefix_kv_bytes_follow_the_model_shape() -> None:
    """Llama 3 8B: 32 layers, 8 KV heads of 128, K and V, 2 bytes each = 131,072 bytes per token."""
    model = CAT.model("llama-3-8b")
    assert (model.layers, model.kv_heads, model.head_dim) == (32, 8, 128)
    assert prefix_kv_bytes(model, "bf16", 2048) == 2048 * 2 * 32 * 8 * 128 * 2
    assert prefix_kv_bytes(model, "fp8", 2048) == 2048 * 2 * 32 * 8 * 128
    with pytest.raises(CostError):
        prefix_kv_bytes(model, "bf16", -1)


@pytest.mark.parametrize(("device", "gbyte_s"), [("h100-sxm", 63.0), ("a100-80gb-sxm", 31.5), ("gaudi3", 63.0)])
def test_tier_read_back_is_bytes_over_bandwidth_plus_latency(device: str, gbyte_s: float) -> None:
    dev = CAT.device(device)
    n_bytes = prefix_kv_bytes(CAT.model("llama-3-8b"), "bf16", 2048)
    assert read_back_s(dev, "host", n_bytes) == pytest.approx(n_bytes / (gbyte_s * 1e9) + 10e-6)
    assert read_back_s(dev, "disk", n_bytes) == pytest.approx(n_bytes / 7.45e9 + 100e-6)
    assert read_back_s(dev, "hbm", n_bytes) == 0.0
    assert read_back_s(dev, "host", 0) == 0.0
    for tier in TIERS:
        link = tier_link(dev, tier)
        assert link.source and (tier == "hbm" or "http" in link.source or "derived:" in link.source)
    with pytest.raises(CostError, match="unknown KV tier"):
        tier_link(dev, "tape")  # type: ignore[arg-type]


def test_a_cpu_replica_reads_host_kv_at_memory_speed() -> None:
    dev = CAT.device("epyc-9654")
    link = tier_link(dev, "host")
    assert link.bw_bytes_s == dev.memory_bw_gbyte_s.value * 1e9 and link.latency_s == 0.0


def test_holding_takes_batch_by_littles_law() -> None:
    dep = deployment(CAT, "llama-3-8b", "h100-sxm", "bf16", 1, 1)
    prefix, rate, context = 2498, 5.0, 3000.0
    short, long = holding(dep, prefix, 0.4, rate, context), holding(dep, prefix, 4.0, rate, context)
    one = prefix_kv_bytes(dep.model, "bf16", prefix)
    assert short.resident_bytes == pytest.approx(one * rate * 0.4)  # 2 prefixes held at once
    assert short.batch_slots == pytest.approx(2 * prefix / context)
    assert short.replica_share == pytest.approx(short.batch_slots / max_memory_batch(dep, context))
    assert long.replica_share == pytest.approx(10 * short.replica_share)
    assert holding(dep, prefix, 0.0, rate, context).usd_h(3.0) == 0.0
    assert short.usd_h(3.0) == pytest.approx(3.0 * short.replica_share)
    # the capacity it draws on is the memory the weights leave
    assert 40e9 < kv_capacity_bytes(dep) < dep.device.memory_gb.value * 1e9
