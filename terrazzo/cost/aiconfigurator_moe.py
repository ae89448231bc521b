"""The MoE terms of serving_priors.yaml, derived from AIConfigurator's measured MoE and GEMM kernel tables.

A routed-expert layer runs fused or grouped GEMMs whose efficiency differs from one dense GEMM's. For
each (system, engine, expert shape, layout) this prints, from aiconfigurator-core's tables (the same
pinned package as terrazzo.cost.aiconfigurator_tables):

- the compute fraction of the datasheet peak the MoE kernel reaches (its best over token counts) over
  the dense GEMMs' (same system, engine and dtype, 4096x16384 and 16384x4096 shapes, m >= 1024), with
  balanced routing;
- the weight stream: HBM bandwidth fraction of the MoE kernel once every local expert is touched
  (<= 256 tokens) over the dense bf16 GEMMs' (m <= 64), the stream the fitted dense efficiency describes;
- the routing skew: latency under power_law_1.01 routing (AIConfigurator's default) over balanced, at
  4096-16384 tokens (compute-bound), by expert-parallel size.

Run (needs the `tables` extra): `python -m terrazzo.cost.aiconfigurator_moe`. Planning never reads the
tables; the printed medians are copied, with this command as their source, into serving_priors.yaml.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.aiconfigurator_tables import read_table

DEVICES = {"a100_sxm": "a100-80gb-sxm", "h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm"}
GEMM_VERSION = {("a100_sxm", "vllm"): "0.14.0", ("h100_sxm", "vllm"): "0.24.0", ("h200_sxm", "vllm"): "0.24.0",
                ("h100_sxm", "trtllm"): "1.3.0rc20", ("h200_sxm", "trtllm"): "1.3.0rc20"}
MOE_VERSION = {"vllm": {"a100_sxm": "0.14.0"}, "trtllm": {}}
# (label, layout, hidden, expert ffn, experts, top-k, moe_tp, moe_ep, dtype)
SHAPES = (("mixtral-8x7b", "moe", 4096, 14336, 8, 2, 2, 1, "bfloat16"),
          ("qwen3-235b-a22b", "moe-ep", 4096, 1536, 128, 8, 1, 8, "fp8"))
CASES = (("a100_sxm", "vllm", 0), ("h100_sxm", "vllm", 0), ("h200_sxm", "vllm", 0), ("h100_sxm", "trtllm", 0),
         ("h200_sxm", "trtllm", 0), ("h100_sxm", "trtllm", 1), ("h200_sxm", "trtllm", 1))
KERNEL = {"vllm": ("vllm_fused_moe", "vllm_unquantizedfusedmoe_triton_tritonexperts"),
          "trtllm": ("moe_torch_flow_cutlass",)}
SKEW_EPS = (1, 2, 4, 8, 16)
SKEW_TOKENS = (4096, 8192, 16384)


def _peaks(system: str, dtype: str) -> tuple[float, float]:
    dev = load_catalog().device(DEVICES[system])
    tflops = dev.tflops("fp8" if dtype == "fp8" else "bf16")
    assert tflops is not None
    return tflops * 1e12, dev.memory_bw_gbyte_s.value * 1e9


def _moe_rows(system: str, backend: str, shape: tuple[Any, ...], distribution: str) -> Any:
    _, _, h, f, e, k, tp, ep, dtype = shape
    version = MOE_VERSION[backend].get(system, GEMM_VERSION[(system, backend)])
    d = read_table(system, "moe", backend, version, "moe_perf")
    sel = d[(d.hidden_size == h) & (d.inter_size == f) & (d.num_experts == e) & (d.topk == k)
            & (d.moe_tp_size == tp) & (d.moe_ep_size == ep) & (d.moe_dtype == dtype)
            & (d.distribution == distribution) & d.kernel_source.isin(KERNEL[backend])]
    return sel.sort_values("num_tokens")


def moe_fractions(system: str, backend: str, shape: tuple[Any, ...]) -> tuple[float, float, str]:
    """(best compute fraction, weight-stream fraction with every local expert touched, routing used);
    balanced routing where the table has it (A100's holds power-law routing only)."""
    _, _, h, f, e, k, tp, ep, dtype = shape
    rows, dist = _moe_rows(system, backend, shape, "balanced"), "balanced"
    if rows.empty:
        rows, dist = _moe_rows(system, backend, shape, "power_law_1.01"), "power_law_1.01"
    peak, bw = _peaks(system, dtype)
    bpe = 1 if dtype == "fp8" else 2
    n, t = rows.num_tokens.to_numpy(float), rows.latency.to_numpy(float) * 1e-3
    local = e * (1 - (1 - k / e) ** n) / ep
    stream = local * 3 * h * f / tp * bpe / (t * bw)
    compute = 2 * n * k * 3 * h * f / (tp * ep) / (t * peak)
    full = (local >= 0.99 * e / ep) & (n <= 256)
    return float(compute.max()), float(stream[full].max()), dist


def dense_fractions(system: str, backend: str, dtype: str) -> tuple[float, float]:
    """(compute fraction of dense GEMMs at m >= 1024 in `dtype`, bf16 weight-stream fraction at m <= 64)."""
    d = read_table(system, "gemm", backend, GEMM_VERSION[(system, backend)], "gemm_perf")
    out = []
    for gemm_dtype, big in ((dtype, True), ("bfloat16", False)):
        peak, bw = _peaks(system, "fp8" if gemm_dtype == "fp8" else "bf16")
        per_shape = []
        for nn, kk in ((16384, 4096), (4096, 16384)):
            s = d[(d.n == nn) & (d.k == kk) & (d.gemm_dtype == gemm_dtype)]
            s = s[s.m >= 1024] if big else s[s.m <= 64]
            t = s.latency.to_numpy(float) * 1e-3
            bpe = 1 if gemm_dtype == "fp8" else 2
            per_shape.append((2 * s.m.to_numpy(float) * nn * kk / (t * peak)).max() if big
                             else (nn * kk * bpe / (t * bw)).max())
        out.append(float(np.mean(per_shape)))
    return out[0], out[1]


def skew(system: str) -> dict[int, float]:
    """Power-law over balanced latency of the Qwen3 expert layer on TensorRT-LLM, by expert-parallel size."""
    out = {}
    for ep in SKEW_EPS:
        shape = (*SHAPES[1][:6], 1, ep, "fp8")
        bal, law = (_moe_rows(system, "trtllm", shape, dist) for dist in ("balanced", "power_law_1.01"))
        ratios = [law[law.num_tokens == n].latency.iloc[0] / bal[bal.num_tokens == n].latency.iloc[0]
                  for n in SKEW_TOKENS]
        out[ep] = float(np.mean(ratios))
    return out


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    ratios: dict[str, tuple[list[float], list[float]]] = {"moe": ([], []), "moe-ep": ([], [])}
    for system, backend, i in CASES:
        shape = SHAPES[i]
        compute, stream, dist = moe_fractions(system, backend, shape)
        dense_c, dense_w = dense_fractions(system, backend, shape[-1])
        rc, rw = compute / dense_c, stream / dense_w
        print(f"{system} {backend} {shape[0]} {shape[1]} {shape[-1]} ({dist}): MoE compute {compute:.2f} "
              f"stream {stream:.2f}; dense compute {dense_c:.2f} bf16 stream {dense_w:.2f}; "
              f"ratio compute {rc:.2f} weights {rw:.2f}")
        ratios[shape[1]][0].append(rc)
        ratios[shape[1]][1].append(rw)
    for layout, (rc_all, rw_all) in ratios.items():
        print(f"{layout}: compute ratio median {np.median(rc_all):.2f} (range {min(rc_all):.2f}-{max(rc_all):.2f}), "
              f"weights ratio median {np.median(rw_all):.2f} (range {min(rw_all):.2f}-{max(rw_all):.2f})")
    per_system = [skew(system) for system in ("h100_sxm", "h200_sxm")]
    print("routing skew by ep:", {ep: round(float(np.mean([s[ep] for s in per_system])), 2) for ep in SKEW_EPS})


if __name__ == "__main__":
    main()
