"""Cost of the non-LLM operators: embedding, approximate nearest-neighbour search, tools, speech.

These run on CPU pools in most plans (the paper's optimiser put them all there), but the same
roofline applies on any device with a peak and a bandwidth.
"""

from __future__ import annotations

import math

from terrazzo.catalog.catalog_schema import DTYPE_BYTES, Device, Efficiency, ModelSpec
from terrazzo.cost.roofline import Estimate, Work, roofline
from terrazzo.errors import CostError

IVF_PROBE_FRACTION = 16 / 1024  # nprobe/nlist, FAISS guidance for ~1M vectors: https://github.com/facebookresearch/faiss/wiki/Faster-search
HNSW_DISTANCES_PER_LEVEL = 32 * 16  # ef_search × M neighbours visited per level (FAISS IndexHNSWFlat defaults)


def _peak_flops(device: Device, dtype: str) -> float:
    """Peak for `dtype`, else the device's 16-bit matrix peak (accelerators without fp32 math)."""
    peak = device.tflops(dtype) or device.tflops("bf16") or device.tflops("fp32")
    if not peak:
        raise CostError(f"{device.name} lists no {dtype}, bf16 or fp32 peak")
    return peak * 1e12


def encoder_forward(model: ModelSpec, device: Device, eff: Efficiency, tokens: float, dtype: str = "fp32") -> Estimate:
    """One forward pass of an encoder (embedding model) over `tokens` tokens."""
    return encoder_batch(model, device, eff, 1, tokens, dtype)


def encoder_batch(model: ModelSpec, device: Device, eff: Efficiency, texts: int, tokens: float,
                  dtype: str = "fp32") -> Estimate:
    """One forward pass over `texts` texts of `tokens` tokens each: weights read once, attention per text."""
    work = Work(
        flops=texts * (2 * model.total_params * tokens + 4 * model.layers * tokens * tokens * model.hidden),
        mem_bytes=model.total_params * DTYPE_BYTES[dtype] + texts * tokens * model.hidden * 4 * model.layers,
    )
    return roofline(work, _peak_flops(device, dtype), device.memory_bw_gbyte_s.value * 1e9, eff)


def ann_search(
    device: Device, eff: Efficiency, vectors: int, dimension: int, k: int, index: str, queries: int = 1,
) -> Estimate:
    """Distance computations of one query batch: exhaustive (flat), inverted lists (ivf) or graph (hnsw)."""
    if index == "flat":
        scanned = float(vectors)
    elif index == "ivf":
        nlist = max(1, int(4 * math.sqrt(vectors)))
        scanned = nlist + vectors * max(IVF_PROBE_FRACTION, 1 / nlist)
    else:
        scanned = HNSW_DISTANCES_PER_LEVEL * max(1.0, math.log2(max(vectors, 2)))
    scanned = min(scanned, float(vectors)) + k
    work = Work(flops=2 * scanned * dimension * queries, mem_bytes=scanned * dimension * 4 * queries)
    return roofline(work, _peak_flops(device, "fp32"), device.memory_bw_gbyte_s.value * 1e9, eff)


def cpu_seconds(cpu_s: float, eff: Efficiency) -> Estimate:
    """A CPU function measured or declared in seconds of one core: no roofline, only overhead."""
    return Estimate(compute_s=cpu_s, memory_s=0.0, static_s=eff.static_latency_s)
