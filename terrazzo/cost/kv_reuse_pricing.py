"""What reusing a resident prefix saves and what keeping it costs, on one replica (cost/llm.py's model).

- `reuse_prefill`: the prefill of a call with `cached_tokens` already in KV (`llm.prefill_work` with a
  cached prefix: GEMMs on the new tokens only, attention over the whole context). The calibrated, measured
  or fitted cold prefill of the full input sets the level and the model of the two work shapes their
  ratio, so at cached_tokens = 0 it is exactly `llm.prefill` and it never exceeds it.
- `prefix_kv_bytes`: a prefix's KV cache (the per-token bytes of cost/llm.py).
- `holding`: a prefix held `hold_s` between calls takes that many bytes from the replica's KV capacity for
  that long; by Little's law `rate × hold_s` prefixes sit there at once, which is decode batch the replica
  cannot run (slots at the decode context) — the price of retaining instead of recomputing or offloading.
- `replica_kv_bytes`: the same on the replica's devices (replicated KV heads counted), what a tier read-back moves;
- tier read-back times: cost/kv_tiers.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.catalog_schema import ModelSpec
from terrazzo.cost.llm import (
    Deployment,
    _kv_shard,
    kv_bytes_per_token,
    max_memory_batch,
    memory_use,
    prefill,
    prefill_roofline,
)
from terrazzo.cost.roofline import Estimate
from terrazzo.errors import CostError


def prefix_kv_bytes(model: ModelSpec, kv_dtype: str, tokens: float) -> float:
    """KV cache bytes of `tokens` prefix tokens over all layers (the whole replica, before TP sharding)."""
    if tokens < 0:
        raise CostError(f"prefix tokens must be >= 0, got {tokens}")
    return tokens * kv_bytes_per_token(model, kv_dtype)


def replica_kv_bytes(dep: Deployment, tokens: float) -> float:
    """KV bytes of `tokens` prefix tokens on all of the replica's devices together: KV heads replicated
    where tp > kv_heads, an MLA latent on every rank (what a tier read-back moves, cost/kv_tiers.py)."""
    return prefix_kv_bytes(dep.model, dep.kv_dtype or dep.dtype, tokens) * _kv_shard(dep) * dep.tp


def reuse_prefill(dep: Deployment, new_tokens: int, cached_tokens: int, batch: int = 1) -> Estimate:
    """Time to first token of `batch` calls whose first `cached_tokens` are resident and `new_tokens` are
    computed. Equals `llm.prefill(dep, new + cached)` when nothing is cached."""
    if new_tokens < 1 or cached_tokens < 0:
        raise CostError(f"a prefill needs new_tokens >= 1 and cached_tokens >= 0, got {new_tokens} and "
                        f"{cached_tokens}")
    cold = prefill(dep, new_tokens + cached_tokens, batch)
    if cached_tokens == 0:
        return cold
    ratio = (prefill_roofline(dep, new_tokens, batch, cached_tokens).latency_s
             / prefill_roofline(dep, new_tokens + cached_tokens, batch).latency_s)
    return cold.scaled(min(ratio, 1.0))  # reading a prefix is never slower than computing it


@dataclass(frozen=True)
class Holding:
    """A prefix kept resident on one replica between calls."""

    prefix_bytes: float  # KV bytes of one held prefix
    resident_bytes: float  # mean bytes held at once (rate × hold time prefixes)
    batch_slots: float  # decode sequences at the decode context those bytes would have held
    replica_share: float  # batch_slots / the replica's largest decode batch at that context

    def usd_h(self, replica_usd_h: float) -> float:
        """The share of the replica's cost that holding takes (what retaining pays instead of recompute)."""
        return self.replica_share * replica_usd_h


def kv_capacity_bytes(dep: Deployment) -> float:
    """KV bytes (unsharded, as `prefix_kv_bytes` counts them) the replica holds beside its weights and the
    activations of one sequence."""
    use = memory_use(dep, 1, 0.0)
    free_per_device = max(use.capacity - use.weights - use.activations, 0.0)
    return free_per_device * dep.devices / (_kv_shard(dep) * dep.tp)


def holding(dep: Deployment, prefix_tokens: float, hold_s: float, rate_per_s: float, context: float) -> Holding:
    """Cost of keeping a `prefix_tokens` prefix on the replica for `hold_s` after each of `rate_per_s`
    calls per second, against decode at mean `context` tokens per sequence."""
    if hold_s < 0 or rate_per_s < 0 or context <= 0:
        raise CostError(f"hold_s and rate_per_s must be >= 0 and context > 0, got {hold_s}, {rate_per_s}, {context}")
    one = prefix_kv_bytes(dep.model, dep.kv_dtype or dep.dtype, prefix_tokens)
    resident = one * rate_per_s * hold_s
    slots = resident / prefix_kv_bytes(dep.model, dep.kv_dtype or dep.dtype, context)
    batch = max_memory_batch(dep, context)
    return Holding(one, resident, slots, slots / batch if batch else float("inf"))
