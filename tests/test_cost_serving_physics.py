"""The fitted serving model's physics: kernels that run one after another, and MoE served attention-DP
with expert parallelism (the layout of the published MoE points)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import decode_step, decode_work, kv_bytes_per_token, max_memory_batch, memory_use
from terrazzo.cost.serving_model import expert_imbalance, group_key, step_terms

CAT = load_catalog()


def test_gemm_and_attention_kernels_add_rather_than_overlap():
    """A large decode batch at long context runs compute-bound GEMMs, then memory-bound attention: the
    step is the sum of the two rooflines, longer than either resource alone would take."""
    dep = replace(deployment(CAT, "llama-3-70b", "h100", "fp8", 8, 1), kernels=None)  # the fitted model alone
    p, peaks = dep.serving, dep.peaks
    assert p is not None
    w = decode_work(dep, 2048, 4096)
    scale = 1 + p.tp_loss * 3  # log2(8)
    gemm = max(w.gemm_flops / (peaks.flops * p.compute), w.weight_bytes / (peaks.mem_bw * p.weights)) * scale
    attn = max(w.attention_flops / (peaks.flops_16 * p.attention), w.kv_bytes / (peaks.mem_bw * p.kv)) * scale
    compute, memory, _, _ = step_terms(w, peaks, p)
    assert max(compute, memory) == pytest.approx(gemm + attn, rel=1e-9)
    all_compute = (w.gemm_flops / (peaks.flops * p.compute) + w.attention_flops / (peaks.flops_16 * p.attention))
    all_memory = (w.weight_bytes + w.kv_bytes * p.weights / p.kv) / (peaks.mem_bw * p.weights)
    assert max(compute, memory) > max(all_compute, all_memory) * scale  # the old overlap understated it
    est = decode_step(dep, 2048, 4096)
    assert est.latency_s == pytest.approx(max(compute, memory) + est.comm_s + est.static_s, rel=1e-9)


def test_attention_dp_keeps_one_copy_of_each_sequences_kv():
    """Qwen3-235B has 4 KV heads: at tp 8 tensor parallelism replicates each head on two ranks, attention
    DP stores each sequence's cache once, on the rank that runs it."""
    tp_dep = deployment(CAT, "qwen3-235b-a22b", "h200", "fp8", 8, 1)
    dp_dep = replace(tp_dep, attention_dp=True)
    per_token = kv_bytes_per_token(tp_dep.model, "fp8")
    kv_tp = memory_use(tp_dep, 100, 4096).kv_cache
    kv_dp = memory_use(dp_dep, 100, 4096).kv_cache
    assert kv_dp == pytest.approx(100 * 4096 * per_token / 8)
    assert kv_tp == pytest.approx(2 * kv_dp)
    assert max_memory_batch(dp_dep, 4096) > max_memory_batch(tp_dep, 4096)


def test_attention_dp_replicates_dense_weights_and_trades_allreduces_for_expert_all_to_alls():
    tp_dep = deployment(CAT, "qwen3-235b-a22b", "h200", "fp8", 8, 1)
    dp_dep = replace(tp_dep, attention_dp=True)
    m = tp_dep.model
    experts = m.experts * 3 * m.hidden * (m.expert_ffn or m.ffn) * (m.layers - m.dense_layers)
    dense = m.total_params - experts
    assert memory_use(dp_dep, 1, 1024).weights == pytest.approx(dense + experts / 8)  # fp8: 1 byte each
    assert memory_use(tp_dep, 1, 1024).weights == pytest.approx(m.total_params / 8)
    w_tp, w_dp = decode_work(tp_dep, 512, 2048), decode_work(dp_dep, 512, 2048)
    assert w_tp.allreduces == 2 * m.layers
    assert w_dp.allreduces == 2 * (m.layers - m.dense_layers)  # dispatch and combine per MoE layer
    assert w_dp.sequences == 512 / 8  # one scheduler per rank
    dense_dp = replace(deployment(CAT, "llama-3-8b", "h100", "fp8", 2, 1), attention_dp=True)
    assert decode_work(dense_dp, 64, 2048).allreduces == 0  # a dense model under DP exchanges nothing


def test_routing_skew_slows_the_expert_gemms_of_an_expert_parallel_step():
    """The step waits for the busiest rank: expert-parallel GEMM FLOPs carry the measured skew (it grows with
    the ranks the experts are spread over); dense GEMMs and the weight stream do not change."""
    assert expert_imbalance(1) < expert_imbalance(2) < expert_imbalance(8) < expert_imbalance(16)
    assert expert_imbalance(64) == expert_imbalance(16)  # no extrapolation past the measured range
    tp_dep = deployment(CAT, "qwen3-235b-a22b", "h200", "fp8", 8, 1)
    dp_dep = replace(tp_dep, attention_dp=True)
    m = tp_dep.model
    routed = 2 * 512 * m.active_experts * 3 * m.hidden * (m.expert_ffn or m.ffn) * (m.layers - m.dense_layers)
    w_tp, w_dp = decode_work(tp_dep, 512, 2048), decode_work(dp_dep, 512, 2048)
    plain = 2 * m.active_params * 512
    assert w_tp.gemm_flops * 8 == pytest.approx(plain + routed * (expert_imbalance(1) - 1))
    assert w_dp.gemm_flops * 8 == pytest.approx(plain + routed * (expert_imbalance(8) - 1))
    dense = deployment(CAT, "llama-3-8b", "h100", "fp8", 1, 1)
    assert decode_work(dense, 64, 2048).gemm_flops == pytest.approx(2 * dense.model.active_params * 64)


def test_expert_parallel_moe_has_its_own_group():
    nv = EngineVersion(Engine.TRTLLM, "1.0")
    assert group_key("nvidia", nv, True, expert_parallel=True).endswith("/moe-ep")
    assert group_key("nvidia", nv, True).endswith("/moe")
    assert group_key("nvidia", nv, False, expert_parallel=True).endswith("/dense")
