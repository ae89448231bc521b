"""Roofline cost of LLM serving on one replica (TP×PP devices): prefill, decode steps, memory, batch limits.

Conventions: FLOPs count a multiply-add as 2; attention is causal in prefill; the KV cache is kept in
`kv_dtype` (default: the weights' dtype, as FP8 serving engines do); weights of every expert stay
resident; the largest batch keeps the whole context of every sequence in memory (paged attention
wastes little, so no fragmentation allowance beyond the usable fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from terrazzo.catalog.catalog_schema import DTYPE_BYTES, Device, Efficiency, ModelSpec
from terrazzo.catalog.engines import EngineVersion
from terrazzo.cost.aiconfigurator import Table as KernelTable
from terrazzo.cost.aiconfigurator import measured_step
from terrazzo.cost.calibration import LlmCalibration
from terrazzo.cost.network import Link, allreduce_s, group_link
from terrazzo.cost.roofline import Estimate, Work, roofline
from terrazzo.cost.serving_model import Peaks, ServingParams, StepWork, expert_imbalance, step_estimate
from terrazzo.errors import CostError
from terrazzo.spec.cluster import Fabric

USABLE_MEMORY_FRACTION = 0.9  # vLLM's default gpu_memory_utilization: https://docs.vllm.ai/en/latest/configuration/engine_args.html
ACTIVATION_BYTES = 2  # activations and all-reduce payloads travel in 16-bit even for FP8 weights
MAX_BATCH = 4096
# Prompt tokens an engine prefills in one batched step (vLLM's max_num_batched_tokens for throughput
# serving: https://docs.vllm.ai/en/latest/configuration/optimization.html); many short prompts share a pass.
PREFILL_TOKEN_BUDGET = 8192


@dataclass(frozen=True)
class Deployment:
    """One model replica: `tp`×`pp` devices of one type serving `model` in `dtype`."""

    model: ModelSpec
    device: Device
    dtype: str
    prefill_eff: Efficiency
    decode_eff: Efficiency
    fabric: Fabric = field(default_factory=Fabric)
    tp: int = 1
    pp: int = 1
    kv_dtype: str | None = None
    calibration: LlmCalibration | None = None  # measured points of this model on this device (a profile)
    engine: EngineVersion | None = None  # the serving engine and version the estimate is for
    serving: ServingParams | None = None  # fitted efficiencies of (vendor, engine, version, arch); None: roofline
    kernels: KernelTable | None = None  # measured kernel step times for this device and engine (AIConfigurator)
    # Attention data-parallel over the tp ranks (each rank runs its own sequences with a full copy of the
    # non-expert weights and its sequences' whole KV cache), experts expert-parallel: the MoE layout of
    # TensorRT-LLM's `enable_attention_dp` and SGLang's `--enable-dp-attention`.
    attention_dp: bool = False

    def __post_init__(self) -> None:
        if self.device.tflops(self.compute_dtype) is None:
            have = ", ".join(self.device.peak_tflops)
            raise CostError(f"{self.device.name} has no {self.dtype} peak in the catalog (it lists {have})")
        if self.tp < 1 or self.pp < 1:
            raise CostError(f"tp and pp must be at least 1, got tp={self.tp} pp={self.pp}")
        if self.model.heads % self.tp:
            raise CostError(f"tp={self.tp} does not divide {self.model.name}'s {self.model.heads} attention heads")
        if self.pp > self.model.layers:
            raise CostError(f"pp={self.pp} exceeds {self.model.name}'s {self.model.layers} layers")

    @property
    def compute_dtype(self) -> str:
        """8-bit weights on a device without 8-bit math run weight-only (W8A16): stored small, computed in 16 bit."""
        if self.dtype in ("fp8", "int8") and self.device.tflops(self.dtype) is None:
            return "fp16"
        return self.dtype

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def bytes_per_weight(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @cached_property
    def peak_flops(self) -> float:
        return (self.device.tflops(self.compute_dtype) or 0.0) * 1e12

    @property
    def mem_bw_bytes_s(self) -> float:
        return self.device.memory_bw_gbyte_s.value * 1e9

    @cached_property  # priced ~10^5 times per plan; the dataclass is frozen, so this never goes stale
    def peaks(self) -> Peaks:
        return Peaks(self.peak_flops, (self.device.tflops("bf16") or self.device.tflops("fp16") or 0.0) * 1e12
                     or self.peak_flops, self.mem_bw_bytes_s, self.tp_link.bw_bytes_s)

    @cached_property
    def tp_link(self) -> Link:
        return group_link(self.device, self.fabric, self.tp)

    @cached_property
    def pp_link(self) -> Link:
        return group_link(self.device, self.fabric, self.devices)


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str) -> float:
    """Bytes of KV cache per token over all layers: 2·layers·kv_heads·head_dim·bpe; MLA stores one latent."""
    bpe = DTYPE_BYTES[kv_dtype]
    if model.mla is not None:
        return model.layers * (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * bpe
    return 2 * model.layers * model.kv_heads * model.head_dim * bpe


def _expert_params_per_layer(model: ModelSpec) -> float:
    return 3 * model.hidden * (model.expert_ffn or model.ffn)  # gate, up, down projections


def _moe_layers(model: ModelSpec) -> int:
    return model.layers - model.dense_layers


def weight_bytes_read(model: ModelSpec, tokens: float, bpe: float) -> float:
    """Weights a step streams from memory: all of a dense model; for MoE, the experts its tokens touch."""
    if not model.is_moe:
        return model.total_params * bpe
    routed = model.experts * _expert_params_per_layer(model) * _moe_layers(model)
    always = model.total_params - routed
    touched = model.experts * (1 - (1 - model.active_experts / model.experts) ** max(tokens, 1.0))
    return (always + touched * _expert_params_per_layer(model) * _moe_layers(model)) * bpe


def _gemm_flops(dep: Deployment, tokens: float) -> float:
    """GEMM FLOPs of one device in a step over `tokens`: 2 per active parameter and token, with the routed
    experts' share scaled by the routing imbalance: the step waits for the busiest expert (and, expert
    parallel, the busiest rank), which gets more than the mean share of the tokens."""
    m = dep.model
    flops = 2 * m.active_params * tokens
    if m.is_moe:
        routed = 2 * tokens * m.active_experts * _expert_params_per_layer(m) * _moe_layers(m)
        flops += routed * (expert_imbalance(dep.tp if dep.attention_dp else 1) - 1)
    return flops / dep.devices


def attention_flops(model: ModelSpec, new_tokens: float, context: float) -> float:
    """Score and value products for `new_tokens` attending to `context` earlier tokens (2 FLOPs/MAC)."""
    per_token_dim = (
        model.heads * (2 * model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) if model.mla
        else 2 * model.heads * model.head_dim
    )
    return 2 * model.layers * new_tokens * context * per_token_dim


def _kv_shard(dep: Deployment) -> float:
    """Fraction of the KV cache each TP rank holds (KV heads are replicated when tp > kv_heads); under
    attention DP a rank holds all heads of its own 1/tp of the sequences."""
    if dep.attention_dp:
        return 1.0 / dep.tp
    if dep.model.mla is not None:
        return 1.0  # the MLA latent is shared by all heads, so every rank keeps all of it
    return max(1, dep.model.kv_heads // dep.tp) / dep.model.kv_heads


def _weights_per_device(dep: Deployment, tokens: float) -> float:
    """Weight bytes one device streams in a step over `tokens`: 1/(tp·pp) of what the step touches, or
    under attention DP all non-expert weights of its stage plus its 1/tp of the touched experts."""
    m, bpe = dep.model, dep.bytes_per_weight
    if not dep.attention_dp:
        return weight_bytes_read(m, tokens, bpe) / dep.devices
    experts = (weight_bytes_read(m, tokens, bpe) - _dense_params(m) * bpe) / dep.tp
    return (_dense_params(m) * bpe + experts) / dep.pp


def _dense_params(m: ModelSpec) -> float:
    """Parameters outside the routed experts (attention, embeddings, shared experts, dense layers)."""
    return m.total_params - (m.experts * _expert_params_per_layer(m) * _moe_layers(m) if m.is_moe else 0.0)


def _collectives(dep: Deployment, tokens: float) -> tuple[float, float]:
    """(collectives per stage on the critical path, all-reduce payload that costs the same as each).

    Tensor parallel: two all-reduces per layer of the tokens' hidden states. Attention DP with expert
    parallelism: an all-to-all dispatch and combine per MoE layer; each rank sends its tokens/tp hidden
    states to at most min(k, tp) ranks, (tp−1)/tp of them off the device, which costs what a ring
    all-reduce (2(tp−1)/tp of its payload) of half those bytes costs."""
    m = dep.model
    if dep.tp == 1:
        return 0.0, tokens * m.hidden * ACTIVATION_BYTES
    if dep.attention_dp:
        if not m.is_moe:
            return 0.0, 0.0
        sent = tokens / dep.tp * min(m.active_experts, dep.tp) * m.hidden * ACTIVATION_BYTES
        return 2 * _moe_layers(m) / dep.pp, sent / 2
    return 2 * m.layers / dep.pp, tokens * m.hidden * ACTIVATION_BYTES


def _tp_comm_s(dep: Deployment, tokens: float) -> float:
    """The tensor- or expert-parallel collectives of every layer (`_collectives`)."""
    count, payload = _collectives(dep, tokens)
    return count * dep.pp * allreduce_s(payload, dep.tp, dep.tp_link, dep.decode_eff.network) if count else 0.0


def _pp_comm_s(dep: Deployment, tokens: float) -> float:
    if dep.pp == 1:
        return 0.0
    return (dep.pp - 1) * dep.pp_link.transfer_s(tokens * dep.model.hidden * ACTIVATION_BYTES, dep.decode_eff.network)


def _measured(dep: Deployment, phase: str, batch: int, length: float, fitted: Estimate) -> Estimate | None:
    """Measured elsewhere (DESIGN §4 trust order: below a profile of this machine, above the fit)."""
    if dep.kernels is None or dep.serving is None or (dep.kv_dtype or dep.dtype) != dep.dtype:
        return None
    return measured_step(dep.kernels, dep.model.name, dep.dtype, dep.tp, dep.pp, phase, batch, length, dep.serving,
                         fitted)


def prefill(dep: Deployment, isl: int, batch: int = 1) -> Estimate:
    """Prefill of `batch` prompts of `isl` tokens: the time to first token without queueing. Inside the
    range a profile measured, the measured latency (interpolated) replaces the roofline's."""
    est = prefill_roofline(dep, isl, batch)
    cal = dep.calibration
    if cal is None or not cal.applies(dep.tp, dep.pp, dep.dtype, dep.kv_dtype):
        return _measured(dep, "prefill", batch, isl, est) or est
    return cal.prefill(est, batch, isl, lambda c: prefill_roofline(dep, int(c[1]), int(c[0])))


def prefill_work(dep: Deployment, isl: int, batch: int = 1, cached_tokens: int = 0) -> StepWork:
    """One device of one pipeline stage prefilling `batch` prompts of `isl` new tokens, each behind
    `cached_tokens` already in KV (a resident prefix): the GEMMs run on the new tokens, attention reads the
    whole context, the new tokens' KV is written once and the cached KV read."""
    m, tokens, n = dep.model, isl * batch, dep.devices
    kv = (tokens + cached_tokens * batch) * kv_bytes_per_token(m, dep.kv_dtype or dep.dtype) * _kv_shard(dep) * dep.tp
    return StepWork(_gemm_flops(dep, tokens), attention_flops(m, tokens, cached_tokens + isl / 2) / n,
                    _weights_per_device(dep, tokens), kv / n, *_collectives(dep, tokens), dep.tp,
                    _host_sequences(dep, batch))


def _host_sequences(dep: Deployment, batch: float) -> float:
    """Sequences one scheduler advances per step: all of the replica's, or under attention DP (one
    scheduler per rank) its 1/tp share."""
    return batch / dep.tp if dep.attention_dp else batch


def decode_work(dep: Deployment, batch: int, context: float) -> StepWork:
    """One device of one pipeline stage in a decode step of `batch` sequences at mean `context`."""
    m, n = dep.model, dep.devices
    kv = batch * context * kv_bytes_per_token(m, dep.kv_dtype or dep.dtype) * _kv_shard(dep) * dep.tp
    return StepWork(_gemm_flops(dep, batch), attention_flops(m, batch, context) / n,
                    _weights_per_device(dep, batch), kv / n, *_collectives(dep, batch), dep.tp,
                    _host_sequences(dep, batch))


def _fitted(dep: Deployment, work: StepWork, tokens: float, phase: str) -> Estimate:
    """The fitted serving model: one stage's step, crossed pp times, plus the pipeline hand-offs."""
    assert dep.serving is not None
    stage = step_estimate(work, dep.peaks, dep.serving, phase)
    return Estimate(stage.compute_s * dep.pp, stage.memory_s * dep.pp, stage.comm_s * dep.pp + _pp_comm_s(dep, tokens),
                    stage.static_s * dep.pp, stage.source, stage.spread)


def prefill_roofline(dep: Deployment, isl: int, batch: int = 1, cached_tokens: int = 0) -> Estimate:
    """The model's prefill (fitted, else the plain roofline), before any measurement replaces it; with
    `cached_tokens` resident ahead of each prompt's `isl` new ones (prefill_work's terms)."""
    if dep.serving is not None:
        return _fitted(dep, prefill_work(dep, isl, batch, cached_tokens), isl * batch, "prefill")
    m, tokens = dep.model, isl * batch
    work = Work(
        flops=2 * m.active_params * tokens + attention_flops(m, tokens, cached_tokens + isl / 2),
        mem_bytes=_weights_per_device(dep, tokens) * dep.devices
        + (tokens + cached_tokens * batch) * kv_bytes_per_token(m, dep.kv_dtype or dep.dtype) * _kv_shard(dep) * dep.tp,
    )
    per_device = Work(work.flops / dep.devices, work.mem_bytes / dep.devices)
    comm = _tp_comm_s(dep, tokens) + _pp_comm_s(dep, tokens)
    one_stage = roofline(per_device, dep.peak_flops, dep.mem_bw_bytes_s, dep.prefill_eff)
    # A request crosses every pipeline stage in turn, each doing 1/pp of the layers.
    return Estimate(one_stage.compute_s * dep.pp, one_stage.memory_s * dep.pp, comm, one_stage.static_s * dep.pp,
                    one_stage.source)


def decode_step(dep: Deployment, batch: int, context: float) -> Estimate:
    """One decode iteration producing a token for each of `batch` sequences at mean `context` (measured
    and interpolated inside a profile's range, like `prefill`)."""
    est = decode_roofline(dep, batch, context)
    cal = dep.calibration
    if cal is None or not cal.applies(dep.tp, dep.pp, dep.dtype, dep.kv_dtype):
        return _measured(dep, "decode", batch, context, est) or est
    return cal.decode(est, batch, context, lambda c: decode_roofline(dep, int(c[0]), c[1]))


def decode_roofline(dep: Deployment, batch: int, context: float) -> Estimate:
    if batch < 1:
        raise CostError(f"batch must be at least 1, got {batch}")
    if dep.serving is not None:
        return _fitted(dep, decode_work(dep, batch, context), batch, "decode")
    m = dep.model
    kv = kv_bytes_per_token(m, dep.kv_dtype or dep.dtype) * _kv_shard(dep) * dep.tp
    work = Work(
        flops=2 * m.active_params * batch + attention_flops(m, batch, context),
        mem_bytes=_weights_per_device(dep, batch) * dep.devices + batch * context * kv,
    )
    per_device = Work(work.flops / dep.devices, work.mem_bytes / dep.devices)
    comm = _tp_comm_s(dep, batch) + _pp_comm_s(dep, batch)
    stage = roofline(per_device, dep.peak_flops, dep.mem_bw_bytes_s, dep.decode_eff)
    return Estimate(stage.compute_s * dep.pp, stage.memory_s * dep.pp, comm, stage.static_s * dep.pp, stage.source)


@dataclass(frozen=True)
class MemoryUse:
    """Per-device bytes: weights, KV cache and activations, against the usable capacity."""

    weights: float
    kv_cache: float
    activations: float
    capacity: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


def memory_use(dep: Deployment, batch: int, context: float, prefill_tokens: int = 0) -> MemoryUse:
    """Per-device memory with `batch` sequences per micro-batch at `context` tokens each."""
    m = dep.model
    # `batch` sequences per micro-batch and pp micro-batches in flight, spread over tp·pp devices.
    in_flight = batch * dep.pp
    kv_total = in_flight * context * kv_bytes_per_token(m, dep.kv_dtype or dep.dtype) * _kv_shard(dep) * dep.tp
    working_tokens = max(batch, prefill_tokens)
    activations = working_tokens * (4 * m.hidden + 2 * (m.expert_ffn or m.ffn)) * ACTIVATION_BYTES / dep.tp
    activations += batch * m.vocab * 4  # fp32 logits of the last position
    return MemoryUse(
        weights=_weights_resident(dep),
        kv_cache=kv_total / dep.devices,
        activations=activations,
        capacity=dep.device.memory_gb.value * 1e9 * USABLE_MEMORY_FRACTION,
    )


def _weights_resident(dep: Deployment) -> float:
    """Weight bytes stored per device (every expert stays resident; attention DP replicates the rest)."""
    m, bpe = dep.model, dep.bytes_per_weight
    if not dep.attention_dp:
        return m.total_params * bpe / dep.devices
    return (_dense_params(m) + (m.total_params - _dense_params(m)) / dep.tp) * bpe / dep.pp


def max_memory_batch(dep: Deployment, context: float) -> int:
    """Largest batch whose weights, KV at `context` and activations fit (0 when the weights alone do not)."""
    if not memory_use(dep, 1, context).fits:
        return 0
    lo, hi = 1, MAX_BATCH
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if memory_use(dep, mid, context).fits else (lo, mid - 1)
    return lo


def max_batch(dep: Deployment, context: float, tbt_s: float | None, peak_context: float | None = None) -> int:
    """Largest decode batch whose step time at `context` meets `tbt_s` and whose KV at `peak_context` fits.

    Returns 0 when not even batch 1 qualifies. Step time grows with batch, so bisection is exact.
    """
    limit = max_memory_batch(dep, peak_context or context)
    if limit == 0 or (tbt_s is not None and decode_step(dep, 1, context).latency_s > tbt_s):
        return 0
    if tbt_s is None:
        return limit
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if decode_step(dep, mid, context).latency_s <= tbt_s else (lo, mid - 1)
    return lo


def decode_tokens_per_s(dep: Deployment, batch: int, context: float) -> float:
    """Steady-state output tokens per second of one replica; pipeline stages overlap micro-batches."""
    step = decode_step(dep, batch, context)
    return batch * dep.pp / step.latency_s if batch else 0.0


def prefill_tokens_per_s(dep: Deployment, isl: int, batch: int = 1) -> float:
    est = prefill(dep, isl, batch)
    return isl * batch * dep.pp / est.latency_s


def mean_decode_context(isl: float, osl: float) -> float:
    """Average context over a request's decode: the prompt plus half of the output."""
    return isl + osl / 2


def valid_tp(model: ModelSpec, max_tp: int) -> list[int]:
    return [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= max_tp and model.heads % t == 0]


def aggregated_tokens_per_s(dep: Deployment, isl: int, osl: int, batch: int) -> float:
    """Output tokens/s of one replica doing both phases (continuous batching, prefill not overlapped).

    Each finished request costs the replica its share of a batched prefill (prompts packed up to the
    token budget) plus its share (1/batch) of `osl` decode steps at the mean context; throughput is
    `osl` over that time, times pp stages.
    """
    if batch < 1:
        return 0.0
    step_s = decode_step(dep, batch, mean_decode_context(isl, osl)).latency_s
    per_request_s = prefill_share_s(dep, isl, batch) + osl * step_s / batch
    return osl * dep.pp / per_request_s


def prefill_share_s(dep: Deployment, isl: int, batch: int) -> float:
    """Replica time one request's prefill takes when the engine batches prompts up to the token budget."""
    together = max(1, min(batch, PREFILL_TOKEN_BUDGET // max(isl, 1)))
    return prefill(dep, isl, together).latency_s / together
