"""Tabulate NVIDIA AIConfigurator's measured kernel data once into step-time tables terrazzo ships.

aiconfigurator-core (PyPI, Apache-2.0, pinned below) ships per-kernel latencies measured on NVIDIA
systems for TensorRT-LLM, vLLM and SGLang releases: GEMM, context and generation attention, custom
all-reduce. This script composes them into the kernel time of one prefill and one decode step of the
catalog's dense Llama models (per layer: QKV, O, gate-up and down GEMMs, attention, two all-reduces;
plus the logits GEMM), on a grid of batch × context (decode) and batch × prompt length (prefill; its
attention kernels also apart, so a chunk behind earlier tokens can be priced by its causal pairs), and
writes catalog/data/aiconfigurator/<system>_<backend>_<version>.yaml. The precision is the one the system's
tables were measured in: fp8 GEMMs and KV cache where the GPU has fp8 (Hopper, Blackwell), bf16 where it
has not (A100: its tables hold bf16 only; fp16 runs at the same tensor-core rate there, 312 TFLOPS both on
the datasheet, so the bf16 kernels also answer for fp16). Planning reads those tables
(terrazzo/cost/aiconfigurator.py) and never runs AIConfigurator. Element-wise kernels (norms, RoPE,
activation) are not in the tables; the fitted per-step overhead of the engine is added at estimate time.

Regenerate (needs the `tables` extra: aiconfigurator-core, pandas, pyarrow):

    python -m terrazzo.cost.aiconfigurator_tables --system h100_sxm --backend trtllm --version 1.3.0rc20
    python -m terrazzo.cost.aiconfigurator_tables --system a100_sxm --backend vllm --version 0.14.0 --precision bf16
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from terrazzo.catalog.catalog_loader import DATA_DIR, load_catalog
from terrazzo.catalog.catalog_schema import ModelSpec

PACKAGE = "aiconfigurator-core"
PINNED = "0.12.0"
OUT_DIR = DATA_DIR / "aiconfigurator"
MODELS = ("llama-3-8b", "codellama-34b", "llama-3-70b", "llama-3.1-405b")
# precision → (GEMM dtype, KV-cache dtype) in AIConfigurator's tables, and the catalog dtypes it answers for
PRECISIONS = {"fp8": ("fp8", "fp8", ("fp8",)), "bf16": ("bfloat16", "bfloat16", ("bf16", "fp16"))}
TPS = (1, 2, 4, 8)
DECODE_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DECODE_CONTEXT = (128, 256, 512, 1024, 2048, 4096, 8192)
PREFILL_BATCH = (1, 2, 4, 8, 16, 32, 64)
PREFILL_ISL = (128, 256, 512, 1024, 2048, 4096)


def _data_dir() -> Path:
    import aiconfigurator_core  # the package's own data directory: systems/data/<system>/<op>/<backend>/<ver>

    return Path(aiconfigurator_core.__file__).parent / "systems" / "data"


def read_table(system: str, op: str, backend: str, version: str, name: str) -> Any:
    """One of aiconfigurator-core's shipped kernel tables, as a DataFrame (its own parquet files)."""
    import pandas as pd

    return pd.read_parquet(_data_dir() / system / op / backend / version / f"{name}.parquet")


def _window(frame: Any) -> Any:
    """The attention window column (0: full attention); tables without one hold full attention only."""
    return frame.window_size if "window_size" in frame else 0


def _loglin(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Linear interpolation in log x (clamped at the ends, where the nearest measurement answers)."""
    order = np.argsort(xs)
    return float(np.interp(math.log(x), np.log(xs[order]), ys[order]))


def _loglin_or_proportional(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """As `_loglin`, but past the largest measured x the latency grows in proportion to x: decode attention
    streams the KV cache, whose bytes are ∝ batch × context, so a longer context or a larger batch than
    measured costs its share more (clamping priced a batch of 256 at 4k tokens as at 1k)."""
    top = float(np.max(xs))
    if x <= top:
        return _loglin(x, xs, ys)
    return float(ys[int(np.argmax(xs))]) * x / top


def _curves(frame: Any, keys: list[str], x: str) -> dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]]:
    """{key values: (x values, latency ms)} for every combination of `keys` in the table."""
    return {k if isinstance(k, tuple) else (k,): (g[x].to_numpy(dtype=float), g.latency.to_numpy(dtype=float))
            for k, g in frame.groupby(keys)}


class Kernels:
    """Latency lookups over one (system, backend, version)'s kernel tables, in seconds."""

    def __init__(self, system: str, backend: str, version: str, comm_version: str | None = None,
                 precision: str = "fp8") -> None:
        self.gemm_dtype, kv_dtype, _ = PRECISIONS[precision]
        gemm = read_table(system, "gemm", backend, version, "gemm_perf")
        self.gemm = _curves(gemm[gemm.gemm_dtype.isin([self.gemm_dtype, "bfloat16"])], ["gemm_dtype", "n", "k"], "m")
        gen = read_table(system, "attention", backend, version, "generation_attention_perf")
        gen = gen[(_window(gen) == 0) & (gen.kv_cache_dtype == kv_dtype) & (gen.head_dim == 128)]
        self.gen = _curves(gen, ["num_heads", "num_key_value_heads", "batch_size"], "step")
        ctx = read_table(system, "attention", backend, version, "context_attention_perf")
        ctx = ctx[(_window(ctx) == 0) & (ctx.kv_cache_dtype == kv_dtype) & (ctx.head_dim == 128)
                  & (ctx.attn_dtype == "bfloat16")]
        self.ctx = _curves(ctx, ["num_heads", "num_key_value_heads", "batch_size"], "isl")
        self.ar = _curves(read_table(system, "comm", backend, comm_version or version, "custom_allreduce_perf"),
                          ["num_gpus"], "message_size")

    def gemm_s(self, m: int, n: int, k: int, dtype: str | None = None) -> float:
        """Interpolate achieved FLOP/s (smooth in every dimension) between the measured (n, k) shapes."""
        dtype = dtype or self.gemm_dtype
        shapes = [key[1:] for key in self.gemm if key[0] == dtype]
        ns, ks = np.array(sorted({s[0] for s in shapes})), np.array(sorted({s[1] for s in shapes}))

        def rate(nn: int, kk: int) -> float:
            ms, lat = self.gemm[(dtype, nn, kk)]
            return _loglin(m, ms, 2.0 * ms * nn * kk / (lat * 1e-3))

        def bracket(vals: np.ndarray, x: int) -> tuple[int, int, float]:
            lo = vals[vals <= x].max() if (vals <= x).any() else vals.min()
            hi = vals[vals >= x].min() if (vals >= x).any() else vals.max()
            w = 0.0 if lo == hi else (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return int(lo), int(hi), w

        n0, n1, wn = bracket(ns, n)
        k0, k1, wk = bracket(ks, k)
        r = ((1 - wn) * (1 - wk) * rate(n0, k0) + wn * (1 - wk) * rate(n1, k0) + (1 - wn) * wk * rate(n0, k1)
             + wn * wk * rate(n1, k1))
        return 2.0 * m * n * k / r

    @staticmethod
    def _attention(curves: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]], batch: int, length: int,
                   heads: int, kv_heads: int, scale_by_kv: bool) -> float:
        """Interpolated over batch and length; a head count the table lacks is scaled from the nearest
        measured one (decode attention reads KV: ∝ kv heads; prefill attention computes: ∝ heads). Decode
        attention past the measured batch or context grows in proportion (`_loglin_or_proportional`)."""
        pairs = {(h, kv) for h, kv, _ in curves}
        h, kv = min(pairs, key=lambda p: abs(math.log(p[0] / heads)) + abs(math.log(p[1] / kv_heads)))
        scale = (kv_heads / kv) if scale_by_kv else (heads / h)
        bs = np.array(sorted(b for hh, kk, b in curves if (hh, kk) == (h, kv)), dtype=float)
        along = _loglin_or_proportional if scale_by_kv else _loglin
        per_b = np.array([along(length, *curves[(h, kv, int(b))]) for b in bs])
        return along(batch, bs, per_b) * 1e-3 * scale

    def generation_s(self, batch: int, context: int, heads: int, kv_heads: int) -> float:
        return self._attention(self.gen, batch, context, heads, kv_heads, scale_by_kv=True)

    def context_s(self, batch: int, isl: int, heads: int, kv_heads: int) -> float:
        return self._attention(self.ctx, batch, isl, heads, kv_heads, scale_by_kv=False)

    def allreduce_s(self, elements: int, gpus: int) -> float:
        if gpus == 1:
            return 0.0
        return _loglin(elements, *self.ar[(gpus,)]) * 1e-3


def step_s(k: Kernels, m: ModelSpec, tp: int, tokens: int, attention_s: float, logits_rows: int) -> tuple[float, float]:
    """(GEMM + attention seconds, all-reduce seconds) of one step over `tokens` tokens on one GPU."""
    qkv = (m.heads + 2 * m.kv_heads) * m.head_dim // tp
    per_layer = (k.gemm_s(tokens, qkv, m.hidden) + k.gemm_s(tokens, m.hidden, m.heads * m.head_dim // tp)
                 + k.gemm_s(tokens, 2 * m.ffn // tp, m.hidden) + k.gemm_s(tokens, m.hidden, m.ffn // tp))
    kernels = m.layers * (per_layer + attention_s) + k.gemm_s(logits_rows, m.vocab // tp, m.hidden, "bfloat16")
    return kernels, 2 * m.layers * k.allreduce_s(tokens * m.hidden, tp)


def tabulate(system: str, backend: str, version: str, comm_version: str | None = None,
             precision: str = "fp8") -> dict[str, Any]:
    k, cat = Kernels(system, backend, version, comm_version, precision), load_catalog()
    gemm_dtype, kv_dtype, dtypes = PRECISIONS[precision]
    tables: dict[str, Any] = {}
    for name in MODELS:
        m = cat.model(name)
        for tp in TPS:
            heads, kvh = m.heads // tp, max(1, m.kv_heads // tp)
            dec = [[step_s(k, m, tp, b, k.generation_s(b, c, heads, kvh), b) for c in DECODE_CONTEXT]
                   for b in DECODE_BATCH]
            layer_attn = [[k.context_s(b, s, heads, kvh) for s in PREFILL_ISL] for b in PREFILL_BATCH]
            pre = [[step_s(k, m, tp, b * s, a, b) for s, a in zip(PREFILL_ISL, row, strict=True)]
                   for b, row in zip(PREFILL_BATCH, layer_attn, strict=True)]
            table = {
                "decode": {"batch": list(DECODE_BATCH), "context": list(DECODE_CONTEXT),
                           "kernels_s": [[round(x[0], 7) for x in row] for row in dec],
                           "allreduce_s": [[round(x[1], 7) for x in row] for row in dec]},
                "prefill": {"batch": list(PREFILL_BATCH), "isl": list(PREFILL_ISL),
                            "kernels_s": [[round(x[0], 7) for x in row] for row in pre],
                            "allreduce_s": [[round(x[1], 7) for x in row] for row in pre],
                            "attention_s": [[round(m.layers * x, 7) for x in row] for row in layer_attn]},
            }
            for dtype in dtypes:
                tables[f"{name}/{dtype}/tp{tp}"] = table
    have = importlib.metadata.version(PACKAGE)
    return {
        "source": f"measured:aiconfigurator/{system}/{backend}/{version}",
        "derived": (f"terrazzo/cost/aiconfigurator_tables.py from {PACKAGE}=={have} (Apache-2.0): per-layer GEMM "
                    f"({gemm_dtype}), context/generation attention (bf16 compute, {kv_dtype} KV) and custom "
                    "all-reduce kernel latencies, interpolated in log space; element-wise kernels and engine "
                    "overhead not included"),
        "system": system, "backend": backend, "version": version, "precision": precision, "package_version": have,
        "tables": tables,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, help="aiconfigurator system, e.g. h100_sxm")
    parser.add_argument("--backend", required=True, choices=["trtllm", "vllm", "sglang"])
    parser.add_argument("--version", required=True, help="backend version directory, e.g. 1.3.0rc20")
    parser.add_argument("--comm-version", help="version directory of the all-reduce table when it differs")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp8",
                        help="the precision the system's kernels were measured in (bf16 on A100)")
    args = parser.parse_args(argv)
    have = importlib.metadata.version(PACKAGE)
    if have != PINNED:
        raise SystemExit(f"{PACKAGE}=={have} is installed; the tables are pinned to {PINNED}: "
                         f"pip install {PACKAGE}=={PINNED}")
    data = tabulate(args.system, args.backend, args.version, args.comm_version, args.precision)
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"{args.system}_{args.backend}_{args.version}.yaml"
    head = f"# GENERATED by `python -m terrazzo.cost.aiconfigurator_tables` from {PACKAGE}=={have}; do not edit.\n"
    out.write_text(head + yaml.safe_dump(data, sort_keys=False, width=200))
    print(out)


if __name__ == "__main__":
    main()
