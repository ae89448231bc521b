"""One CodeLlama-34B A100 TP2 replica priced from Vidur's own profile, the way Vidur's execution-time
predictor adds it up, so that the Vidur check runs on the inputs Vidur's figures came from and measures
the scheduler (CONTRACTS.md, "The Vidur check").

The figures are bench/data/vidur_a100_codellama34b_tp2.json (bench/vidur_profile_extract.py: Vidur's
mlp.csv and all_reduce.csv rows, and its predictor's defaults, each with its source). An iteration over
T tokens (decodes plus prefill chunks, rounded up to 8 as Vidur does) takes, over the 48 layers:
- the four linear layers and the element-wise kernels (norms, RoPE, SiLU, residual add) as profiled at
  T tokens per layer;
- two all-reduces per layer, as profiled at T tokens, each plus Vidur's 0.02 ms NCCL launch;
- attention. Vidur's attention profile of this model (attention.csv beside mlp.csv) could not be read
  here: the checkout lists it but holds no copy, and the one other copy found is a Git LFS pointer. So the
  attention is the closest measured figure there is: vLLM 0.14.0's A100 context attention as AIConfigurator
  measured it for this model at TP2 (catalog/data/aiconfigurator/a100_sxm_vllm_0.14.0.yaml, `attention_s`
  of one prompt, the chunks of an iteration priced as a prompt with as many causal pairs), and for
  decodes and the KV writes a memory roofline: the KV bytes at the A100's datasheet bandwidth × the
  pinned 0.8 (vidur_scenario.PINNED); decode attention × 1.1 when more than one sequence decodes (Vidur's
  GQA batching overhead), at the mean context rounded up to 64 (Vidur's granularity). Attention is
  ~3–5 % of an iteration here (`attention_share` says how much for a given one).
Vidur's CPU overheads are off by default (`skip_cpu_overhead_modeling`), so none is added; neither are
the embedding and the LM head, which Vidur does not count.

Every iteration length is a table look-up or two and a logarithm: cheap enough for one call per event.
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.aiconfigurator import table_for

PROFILE = Path(__file__).parent / "data" / "vidur_a100_codellama34b_tp2.json"
DEVICE, MODEL, TP = "a100-80gb-sxm", "codellama-34b", 2
ATTENTION_VLLM = "0.14.0"  # the vLLM release AIConfigurator measured on A100-SXM
KV_MEMORY_EFF = 0.8  # vidur_scenario.PINNED's decode memory efficiency (catalog at 3fee923)


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear, extended linearly past either end."""
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])


class VidurProfileCost:
    """Iteration latencies of the replica (the interface `pools.LlmPool` takes: `schedulers.IterationCost`)."""

    def __init__(self, profile: Path = PROFILE) -> None:
        doc = json.loads(profile.read_text())
        self.source = f"{doc['source']} ({profile.name}) + attention {self._attention_source()}"
        p, ar, pred = doc["per_layer"], doc["all_reduce"], doc["predictor"]
        self.layers, self.round_to = int(pred["layers"]), int(pred["token_rounding"])
        self.granularity = int(pred["kv_cache_prediction_granularity"])
        self.decode_overhead = 1.0 + float(pred["attention_decode_batching_overhead_fraction"])
        launch_ms, per_layer_ar = float(pred["nccl_cpu_launch_overhead_ms"]), int(pred["all_reduces_per_layer"])
        tokens = [float(t) for t in p["tokens"]]
        compute = [a + b for a, b in zip(p["linear_ms"], p["elementwise_ms"], strict=True)]
        ar_log = [math.log(t) for t in ar["tokens"]]
        last, half = tokens[-1], _interp(tokens[-1] / 2, tokens, compute)
        rate = (compute[-1] - half) / (last / 2)  # past the profile: its slope over the last doubling (GEMM-bound)
        self._top = int(last) * 4  # tabulated to 4× the profile's longest; linear beyond
        self._dense: list[float] = [0.0]  # seconds of the 48 layers without attention, per T // round_to
        for t in range(self.round_to, self._top + 1, self.round_to):
            own = _interp(t, tokens, compute) if t <= last else compute[-1] + rate * (t - last)
            layer_ms = own + per_layer_ar * (_interp(math.log(t), ar_log, ar["ms"]) + launch_ms)
            self._dense.append(self.layers * layer_ms * 1e-3)
        self._slope = (self._dense[-1] - self._dense[-2]) / self.round_to
        cat = load_catalog([])
        m, dev = cat.model(MODEL), cat.device(DEVICE)
        # KV bytes one token of context adds per GPU over all layers: K and V, kv_heads / tp heads, fp16
        self.kv_bytes_per_token = 2 * (m.kv_heads // TP) * m.head_dim * 2 * m.layers
        self.kv_s_per_token = self.kv_bytes_per_token / (dev.memory_bw_gbyte_s.value * 1e9 * KV_MEMORY_EFF)
        self._attn_len, self._attn_s = self._prefill_attention()
        self._attn_log = [math.log(x) for x in self._attn_len]
        self._attn_lns = [math.log(x) for x in self._attn_s]
        mem = doc["memory"]
        self.block_size, self.max_tokens = int(mem["block_size"]), int(mem["max_tokens"])
        self.kv_tokens = self._vidur_kv_tokens(mem, m)

    @staticmethod
    def _attention_source() -> str:
        t = table_for(DEVICE, EngineVersion(Engine.VLLM, ATTENTION_VLLM))
        return (t.source if t else "none") + " (prefill) + KV roofline (decode, writes)"

    def _prefill_attention(self) -> tuple[list[float], list[float]]:
        t = table_for(DEVICE, EngineVersion(Engine.VLLM, ATTENTION_VLLM))
        if t is None:
            raise ValueError(f"no AIConfigurator table for {DEVICE} vLLM {ATTENTION_VLLM}")
        g = t.tables[f"{MODEL}/fp16/tp{TP}"]["prefill"]
        row = g["batch"].index(1)
        return [float(x) for x in g["isl"]], [float(x) for x in g["attention_s"][row]]

    def _vidur_kv_tokens(self, mem: dict[str, Any], m: Any) -> float:
        """Vidur's KV blocks for this replica, in tokens: request slots of max_tokens each in the memory
        beside the fp16 attention and MLP weights (memory_planner.py, param_counter.py)."""
        q, kv = m.heads // TP, -(-m.kv_heads // TP)
        attention = m.hidden * m.head_dim * (q + 2 * kv) + m.hidden * m.head_dim * q  # Wq, Wk, Wv; Wo
        params = m.layers * (attention + 3 * m.hidden * m.ffn // TP)  # and the gated MLP
        free = mem["total_memory_gb"] * 1024**3 * (1 - mem["memory_margin_fraction"]) - 2 * params
        per_slot = 2 * 2 * m.head_dim * kv * mem["max_tokens"] * m.layers
        return float(int(free // per_slot) * mem["max_tokens"])

    # parts -------------------------------------------------------------------------------------

    def dense_s(self, tokens: float) -> float:
        """The 48 layers' linear layers, element-wise kernels and all-reduces over `tokens` tokens."""
        i = -(-math.ceil(tokens) // self.round_to)
        if i < len(self._dense):
            return self._dense[i]
        return self._dense[-1] + self._slope * (i * self.round_to - self._top)

    def prefill_attention_s(self, sum_sq: float) -> float:
        """Context attention of chunks with Σ c² + 2·c·prefix = `sum_sq`: that of one prompt of √sum_sq tokens
        (the same causal pairs), log-log interpolated in the measured prompt lengths."""
        if sum_sq <= 0:
            return 0.0
        x, xs, ys = 0.5 * math.log(sum_sq), self._attn_log, self._attn_lns
        return math.exp(_interp(x, xs, ys))

    def decode_attention_s(self, batch: int, context: float) -> float:
        g = self.granularity
        ctx = -(-math.ceil(context) // g) * g
        return batch * ctx * self.kv_s_per_token * (self.decode_overhead if batch > 1 else 1.0)

    def attention_share(self, batch: int, context: float, tokens: float, sum_sq: float) -> float:
        """The part of that iteration that is attention (not from Vidur's profile: see the module docstring)."""
        attn = self.prefill_attention_s(sum_sq) + self.decode_attention_s(batch, context) + (
            (tokens + batch) * self.kv_s_per_token)
        return attn / self.mixed_step_s(batch, context, tokens, sum_sq)

    # the pool's interface ------------------------------------------------------------------------

    def decode_step_s(self, batch: int, context: float) -> float:
        return self.dense_s(batch) + batch * self.kv_s_per_token + self.decode_attention_s(batch, context)

    def prefill_s(self, tokens: float, sum_sq: float) -> float:
        return self.dense_s(tokens) + tokens * self.kv_s_per_token + self.prefill_attention_s(sum_sq)

    def mixed_step_s(self, batch: int, context: float, tokens: float, sum_sq: float) -> float:
        if batch <= 0:
            return self.prefill_s(tokens, sum_sq)
        return (self.dense_s(tokens + batch) + (tokens + batch) * self.kv_s_per_token
                + self.prefill_attention_s(sum_sq) + self.decode_attention_s(batch, context))

    def context_read_s(self, cached_tokens: float, pairs: float) -> float:
        """Zero: a chunk's attention to the prompt's earlier chunks is already in `sum_sq` (its pairs)."""
        return 0.0

    def kv_capacity_tokens(self, batch: int) -> float:
        return self.kv_tokens
