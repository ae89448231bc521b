"""Cost model: roofline regimes, monotonicity, memory and batch limits, KV sizes, collectives."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.catalog_schema import Sourced
from terrazzo.cost.candidates import deployment, llm_candidates
from terrazzo.cost.llm import (
    decode_step,
    kv_bytes_per_token,
    max_batch,
    memory_use,
    prefill,
    weight_bytes_read,
)
from terrazzo.cost.network import Link, allreduce_s, kv_egress_peak_bytes_s, kv_ingress_peak_bytes_s
from terrazzo.errors import CostError

CAT = load_catalog()
ACCELERATORS = [d.name for d in CAT.devices.values() if d.kind != "cpu"]


def smallest_fitting(model: str, device: str, dtype: str = "fp16", context: int = 4096):
    """Deployment with the fewest TP ranks whose weights and one sequence fit."""
    for tp in (1, 2, 4, 8):
        dep = deployment(CAT, model, device, dtype, tp, 1)
        if memory_use(dep, 1, context).fits:
            return dep
    pytest.fail(f"{model} does not fit on 8× {device}")


def test_catalog_has_the_required_entries():
    for name in ("a40", "a100", "l4", "l40s", "h100", "h200", "b200", "mi300x", "mi325x", "gaudi2", "gaudi3"):
        assert CAT.device(name).kind in ("gpu", "accelerator")
    assert {d.vendor for d in CAT.devices.values() if d.kind == "cpu"} == {"intel", "amd"}
    for name in ("llama-3-8b", "llama-3-70b", "llama-3.1-405b", "whisper-large-v3", "all-minilm-l6-v2"):
        CAT.model(name)
    assert any(m.is_moe for m in CAT.models.values())


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("model", ["llama-3-8b", "llama-3-70b"])
def test_decode_at_batch_one_is_memory_bound(device, model):
    dep = smallest_fitting(model, device)
    est = decode_step(dep, 1, 2048)
    assert est.memory_s > est.compute_s * 5, (device, est)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_long_prefill_of_llama_70b_is_compute_bound(device):
    dep = smallest_fitting("llama-3-70b", device)
    est = prefill(dep, 4096)
    assert est.compute_s > est.memory_s, (device, est)
    assert est.bound == "compute"


@settings(max_examples=60, deadline=None)
@given(
    device=st.sampled_from(ACCELERATORS),
    batch=st.integers(1, 512),
    context=st.integers(1, 32768),
    extra_batch=st.integers(0, 256),
    extra_context=st.integers(0, 8192),
)
def test_step_time_never_decreases_with_batch_or_context(device, batch, context, extra_batch, extra_context):
    dep = deployment(CAT, "llama-3-8b", device, "fp16", 1, 1)
    base = decode_step(dep, batch, context).latency_s
    assert decode_step(dep, batch + extra_batch, context).latency_s >= base
    assert decode_step(dep, batch, context + extra_context).latency_s >= base


@settings(max_examples=40, deadline=None)
@given(device=st.sampled_from(ACCELERATORS), factor=st.floats(1.01, 4.0), batch=st.integers(1, 16))
def test_more_bandwidth_is_never_slower_at_memory_bound_work(device, factor, batch):
    dep = deployment(CAT, "llama-3-8b", device, "fp16", 1, 1)
    dev = dep.device
    faster = dev.model_copy(update={"memory_bw_gbyte_s": Sourced(
        value=dev.memory_bw_gbyte_s.value * factor, source="derived: test scaling")})
    dep_fast = deployment(CAT, "llama-3-8b", device, "fp16", 1, 1).__class__(
        **{**dep.__dict__, "device": faster})
    slow, fast = decode_step(dep, batch, 1024), decode_step(dep_fast, batch, 1024)
    assert slow.memory_s > slow.compute_s  # memory-bound (a fixed step overhead may still be the largest term)
    assert fast.latency_s < slow.latency_s


def test_kv_bytes_per_token_gqa_and_mla():
    # Llama 3 70B: 2 (K,V) x 80 layers x 8 KV heads x 128 dims x 2 bytes = 327,680 bytes
    assert kv_bytes_per_token(CAT.model("llama-3-70b"), "fp16") == 327_680
    assert kv_bytes_per_token(CAT.model("llama-3-70b"), "fp8") == 163_840
    # Llama 3 8B: 2 x 32 x 8 x 128 x 2 = 131,072
    assert kv_bytes_per_token(CAT.model("llama-3-8b"), "bf16") == 131_072
    ds = CAT.model("deepseek-v3")
    assert ds.mla is not None
    # MLA keeps one latent (512) plus the decoupled RoPE key (64) per layer: 61 x 576 x 2 bytes
    assert kv_bytes_per_token(ds, "bf16") == ds.layers * 576 * 2
    assert kv_bytes_per_token(ds, "bf16") < kv_bytes_per_token(CAT.model("llama-3-70b"), "bf16") / 4


def test_moe_decode_reads_only_touched_experts():
    mixtral = CAT.model("mixtral-8x7b")
    total = mixtral.total_params * 2
    one = weight_bytes_read(mixtral, 1, 2)
    assert one < 0.45 * total  # 2 of 8 experts per layer plus shared attention
    assert weight_bytes_read(mixtral, 4096, 2) == pytest.approx(total, rel=1e-3)


def test_max_batch_meets_limit_and_is_largest():
    dep = deployment(CAT, "llama-3-70b", "h100", "fp8", 2, 1)
    limit_s = 0.04
    b = max_batch(dep, 4352, limit_s, peak_context=4608)
    assert b > 1
    assert decode_step(dep, b, 4352).latency_s <= limit_s
    assert memory_use(dep, b, 4608).fits
    over_time = decode_step(dep, b + 1, 4352).latency_s > limit_s
    over_memory = not memory_use(dep, b + 1, 4608).fits
    assert over_time or over_memory


def test_memory_feasibility_rejects_70b_fp16_on_one_a40():
    dep = deployment(CAT, "llama-3-70b", "a40", "fp16", 1, 1)
    assert not memory_use(dep, 1, 1024).fits
    assert max_batch(dep, 1024, None) == 0
    cands = llm_candidates(CAT, "llama-3-70b", "fp16", 512, 4096, ["a40"], CAT.tco_profile("paper-2507.19635"),
                           ttft_s=0.25, tbt_s=0.02)
    tp1 = [c for c in cands if c.tp == 1 and c.pp == 1]
    assert tp1 and all(not c.feasible and "GB per device" in c.reason for c in tp1)


def test_tensor_parallel_splits_weights_and_adds_allreduce():
    one = deployment(CAT, "llama-3-70b", "h100", "fp8", 1, 1)
    four = deployment(CAT, "llama-3-70b", "h100", "fp8", 4, 1)
    assert memory_use(four, 1, 1024).weights == pytest.approx(memory_use(one, 1, 1024).weights / 4)
    assert decode_step(one, 1, 1024).comm_s == 0
    assert decode_step(four, 1, 1024).comm_s > 0
    s1, s4 = decode_step(one, 1, 1024), decode_step(four, 1, 1024)
    assert s4.latency_s - s4.comm_s < s1.latency_s - s1.comm_s  # a quarter of the weights per device


def test_invalid_parallelism_and_dtype_are_cost_errors():
    with pytest.raises(CostError, match="does not divide"):
        deployment(CAT, "llama-3-70b", "h100", "fp16", 3, 1)
    fp32_only = CAT.device("a100").model_copy(update={"peak_tflops": {"fp32": CAT.device("a100").peak_tflops["fp32"]}})
    dep = deployment(CAT, "llama-3-8b", "a100", "fp16", 1, 1)
    with pytest.raises(CostError, match="no fp16 peak"):
        dep.__class__(**{**dep.__dict__, "device": fp32_only})


def test_fp8_without_fp8_math_runs_weight_only():
    fp16 = deployment(CAT, "llama-3-70b", "a100", "fp16", 4, 1)
    w8a16 = deployment(CAT, "llama-3-70b", "a100", "fp8", 4, 1)
    assert w8a16.compute_dtype == "fp16" and w8a16.peak_flops == fp16.peak_flops
    assert memory_use(w8a16, 1, 1024).weights == pytest.approx(memory_use(fp16, 1, 1024).weights / 2)
    assert decode_step(w8a16, 1, 1024).memory_s < decode_step(fp16, 1, 1024).memory_s
    assert deployment(CAT, "llama-3-70b", "h100", "fp8", 4, 1).compute_dtype == "fp8"


def test_ring_allreduce_alpha_beta():
    link = Link("test", 100e9, 1e-6)
    # 8 ranks: 14 steps of alpha, and 2*(7/8) of the payload over the link
    assert allreduce_s(8e6, 8, link, 1.0) == pytest.approx(14e-6 + 2 * 7 / 8 * 8e6 / 100e9)
    assert allreduce_s(8e6, 1, link, 1.0) == 0


def test_kv_transfer_peaks_follow_paper_section_5_2():
    kv = 4096 * 327_680  # one 4k-token Llama 70B fp16 request
    assert kv_egress_peak_bytes_s(kv, 0.25, 1) == pytest.approx(kv / 0.25)
    assert kv_ingress_peak_bytes_s(kv, 0.02, 4) == pytest.approx(kv / 0.08)
    assert math.isclose(kv_egress_peak_bytes_s(kv, 0.25, 2) * 2, kv_egress_peak_bytes_s(kv, 0.25, 1))
