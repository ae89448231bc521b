"""Service times from terrazzo's cost model, made cheap enough to call at every step of a simulation.

Non-LLM ops take the functions the planner prices them with (terrazzo/cost/work.py), evaluated on
each visit's sampled work and memoised on it (token counts and audio windows are whole numbers).

A decode step at batch b and context c is a roofline: max(compute, memory) + communication + overhead,
where compute and memory are affine in c for a fixed b (weights plus b·c KV bytes; 2·P·b plus
attention FLOPs). A prefill of prompts with T tokens in all and Σisl² = S is the same with compute
affine in (T, S) and memory and communication affine in T. So each is evaluated once or twice by
`terrazzo.cost.llm` to get its coefficients, checked against a further call, and from then on costs
a few multiplications. Where the check fails (a mixture-of-experts model reads more experts as the
batch grows, which is not affine in T), the cost model itself is called every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import Device, ModelSpec
from terrazzo.cost.llm import Deployment, decode_step, memory_use
from terrazzo.cost.reuse_calibration import ReadTerm, chunk_prefill, fit_read_term
from terrazzo.cost.roofline import Estimate
from terrazzo.cost.work import HTTP_WAITS_PER_CORE, encoder, memory_io, vector_search, whisper_frames
from terrazzo.errors import SimError
from terrazzo.sim.sampling import dist_draws, token_draws
from terrazzo.spec.agent import (
    ComputeNode,
    EmbedNode,
    MemoryLoadNode,
    MemoryLookupNode,
    MemoryStoreNode,
    Node,
    SttNode,
    ToolNode,
    TtsNode,
)

REL_TOL = 1e-9
PREFILL_MEMO = 1 << 16  # prefill latencies kept per deployment


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b), 1e-12)


class LlmCost:
    """Prefill and decode-step latency of one replica of `dep`, and its KV-cache capacity."""

    def __init__(self, dep: Deployment, reuse_points: Mapping[tuple[float, float], float] | None = None,
                 read: ReadTerm | None = None) -> None:
        self.dep = dep
        self._steps: dict[int, tuple[float, float, float, float, float] | None] = {}
        self._prefill = self._fit_prefill()
        self._prefills: dict[tuple[float, float], float] = {}  # the cost model's answers where no fit holds
        self.read = read if read is not None else fit_read_term(dep, reuse_points or {})

    # reading KV already in cache --------------------------------------------------------------

    @property
    def read_token_s(self) -> float:
        return self.read.per_token_s

    @property
    def read_pair_s(self) -> float:
        return self.read.per_pair_s

    def context_read_s(self, cached_tokens: float, pairs: float) -> float:
        """What chunks that attend to KV already in the cache (a prefix hit, or a prompt's earlier chunks)
        take beyond the prefill model: `cached_tokens` = Σ cached context over such chunks, `pairs` = Σ
        chunk × cached context. Zero unless measured (a profile's reuse points): the planner's read term
        (cost/reuse_calibration.py)."""
        return self.read.seconds(cached_tokens, pairs)

    # decode -----------------------------------------------------------------------------------

    def decode_step_s(self, batch: int, context: float) -> float:
        coef: tuple[float, float, float, float, float] | Literal[False] | None = self._steps.get(batch, False)
        if coef is False:
            coef = self._steps[batch] = self._fit_step(batch)
        if coef is None:
            return decode_step(self.dep, batch, context).latency_s
        c0, c1, m0, m1, rest = coef
        a, b = c0 + c1 * context, m0 + m1 * context
        return (a if a > b else b) + rest

    def _fit_step(self, batch: int) -> tuple[float, float, float, float, float] | None:
        e0, e1 = decode_step(self.dep, batch, 0.0), decode_step(self.dep, batch, 4096.0)
        coef = (e0.compute_s, (e1.compute_s - e0.compute_s) / 4096, e0.memory_s, (e1.memory_s - e0.memory_s) / 4096,
                e0.comm_s + e0.static_s)
        check = decode_step(self.dep, batch, 1000.0)
        c0, c1, m0, m1, rest = coef
        ok = _close(c0 + c1 * 1000, check.compute_s) and _close(m0 + m1 * 1000, check.memory_s)
        return coef if ok and _close(e1.comm_s + e1.static_s, rest) else None

    # prefill ----------------------------------------------------------------------------------

    def prefill_s(self, tokens: float, sum_sq: float) -> float:
        """Latency of one prefill iteration over prompts with `tokens` tokens in all and Σisl² = `sum_sq`."""
        if self._prefill is None:  # memoised: a run's batches repeat few (tokens, Σisl²) pairs, and the cost
            #                          model was 13 % of a 1,000-op check (a pure function: the same numbers)
            key = (tokens, sum_sq)
            got = self._prefills.get(key)
            if got is None:
                if len(self._prefills) >= PREFILL_MEMO:  # sampled prompt lengths: keep the memo bounded
                    self._prefills.clear()
                got = self._prefills[key] = self._exact_prefill(tokens, sum_sq).latency_s
            return got
        ct, cs, m0, mt, r0, rt = self._prefill
        a, b = ct * tokens + cs * sum_sq, m0 + mt * tokens
        return (a if a > b else b) + r0 + rt * tokens

    def _exact_prefill(self, tokens: float, sum_sq: float) -> Estimate:
        return chunk_prefill(self.dep, tokens, sum_sq)  # the planner's (cost/reuse_calibration.py)

    def _fit_prefill(self) -> tuple[float, float, float, float, float, float] | None:
        a = self._exact_prefill(1000.0, 1000.0**2)
        b = self._exact_prefill(2000.0, 2 * 1000.0**2)
        c = self._exact_prefill(1000.0, 500.0**2 * 2)
        cs = (a.compute_s - c.compute_s) / (1000.0**2 - 2 * 500.0**2)
        ct = (a.compute_s - cs * 1000.0**2) / 1000.0
        mt = (b.memory_s - a.memory_s) / 1000.0
        rt = (b.comm_s + b.static_s - a.comm_s - a.static_s) / 1000.0
        coef = (ct, cs, a.memory_s - mt * 1000.0, mt, a.comm_s + a.static_s - rt * 1000.0, rt)
        sq = 1500.0**2 + 1000.0**2 + 500.0**2  # three prompts, 3,000 tokens
        check = self._exact_prefill(3000.0, sq)
        ct, cs, m0, mt, r0, rt = coef
        small = self._exact_prefill(16.0, 256.0)  # a short prompt: an MoE touches only some experts
        ok = all(_close(ct * t + cs * q, e.compute_s) and _close(m0 + mt * t, e.memory_s)
                 and _close(r0 + rt * t, e.comm_s + e.static_s)
                 for t, q, e in ((3000.0, sq, check), (16.0, 256.0, small)))
        return coef if ok else None

    # mixed iterations (chunked prefill) ---------------------------------------------------------

    def mixed_step_s(self, batch: int, context: float, tokens: float, sum_sq: float) -> float:
        """One iteration that decodes `batch` sequences at mean `context` and prefills chunks of `tokens`
        tokens in all (Σ c² + 2·c·prefix = `sum_sq`, the attention work of chunks after their prefixes).

        The same roofline over the union of the work: FLOPs add (each part at its phase's efficiency),
        the weights stream once (the decode step's bytes plus the chunks' KV writes), and the fixed cost
        is the larger of the two phases' (one launch per iteration, collectives over all the tokens)."""
        if tokens <= 0:
            return self.decode_step_s(batch, context)
        if batch <= 0:
            return self.prefill_s(tokens, sum_sq)
        coef: tuple[float, float, float, float, float] | Literal[False] | None = self._steps.get(batch, False)
        if coef is False:
            coef = self._steps[batch] = self._fit_step(batch)
        if (coef is None or self._prefill is None) and not self.dep.model.is_moe:
            return self._mixed_union_s(batch, context, tokens, sum_sq)
        if coef is None or self._prefill is None:  # MoE: the decodes are one-token chunks of a prefill
            return max(self.prefill_s(tokens + batch, sum_sq + batch * (1 + 2 * context)),
                       self.decode_step_s(batch, context))
        c0, c1, m0, m1, rest = coef
        ct, cs, _, mt, r0, rt = self._prefill
        compute = c0 + c1 * context + ct * tokens + cs * sum_sq
        memory = m0 + m1 * context + mt * tokens
        fixed = r0 + rt * (tokens + batch)
        return (compute if compute > memory else memory) + (fixed if fixed > rest else rest)

    def _mixed_union_s(self, batch: int, context: float, tokens: float, sum_sq: float) -> float:
        """The same union where the costs are not linear in their arguments (a profile's measured points
        scale them piecewise): the two phases' estimates at this iteration, compute added, the larger
        memory stream (the weights stream once), the larger fixed cost."""
        d, p = decode_step(self.dep, batch, context), self._exact_prefill(tokens, sum_sq)
        compute, memory = d.compute_s + p.compute_s, max(d.memory_s, p.memory_s)
        return max(compute, memory) + max(d.comm_s + d.static_s, p.comm_s + p.static_s)

    # memory -----------------------------------------------------------------------------------

    def kv_capacity_tokens(self, batch: int) -> float:
        """Context tokens one lane (a micro-batch slot of the pipeline) can hold beside the weights and the
        activations of `batch` sequences; `memory_use` is per device with pp micro-batches in flight."""
        base = memory_use(self.dep, batch, 0.0)
        per_token = memory_use(self.dep, 1, 1.0).kv_cache
        free = base.capacity - base.weights - base.activations
        return max(free, 0.0) / per_token if per_token > 0 else math.inf


class OpService:
    """Per-visit service time of a non-LLM op with the planner's conventions (terrazzo/ir/candidate_pricing.py), on
    this visit's sampled work. `servers` per replica: the cores for host code, 64 waits per core for an
    HTTP call, one for a tensor op on any device (the planner prices those one request at a time).
    Calling it gives (hold_s, after_s): time holding a server, then time off it (an undecomposed tool's
    remote wait)."""

    def __init__(self, catalog: Catalog, node: Node, kind: str, device: str, seed: int, path: str) -> None:
        self.dev: Device = catalog.device(device)
        self.cat, self.node, self.kind = catalog, node, kind
        cores = int(self.dev.cores.value) if self.dev.cores else 1
        self._memo: dict[Any, float] = {}
        host = catalog.efficiency_for(self.dev.name, "cpu").static_latency_s  # work.host_code's fixed overhead
        self.servers = 1
        self.fn: Callable[[], tuple[float, float]]
        if isinstance(node, ToolNode):
            cpu, wait = dist_draws(node.cpu_s, seed, f"{path}.cpu"), dist_draws(node.latency_s, seed, f"{path}.wait")
            http = node.protocol == "http"
            if kind == "tool.lookup":
                self.servers, self.fn = cores, lambda: (cpu() + host, 0.0)
            elif kind == "tool.compute":
                self.servers = HTTP_WAITS_PER_CORE * cores if http else cores
                self.fn = (lambda: (wait(), 0.0)) if http else (lambda: (wait() + host, 0.0))
            else:  # tool.invoke, undecomposed: the core for its CPU time, then the wait off it
                self.servers = cores
                self.fn = (lambda: (cpu() + host, wait())) if http else (lambda: (cpu() + wait() + 2 * host, 0.0))
        elif isinstance(node, ComputeNode):
            cpu = dist_draws(node.cpu_s, seed, f"{path}.cpu")
            self.servers, self.fn = cores, lambda: (cpu() + host, 0.0)
        elif isinstance(node, TtsNode):
            tokens = token_draws(node.input_tokens, seed, f"{path}.tokens")
            if node.model:
                model = catalog.model(node.model)
                self.fn = lambda: (self._encoder(model, tokens()), 0.0)
            else:
                per = node.cpu_s_per_token
                self.servers, self.fn = cores, lambda: (tokens() * per + host, 0.0)
        elif isinstance(node, SttNode):
            audio, steps = dist_draws(node.audio_s, seed, f"{path}.audio"), token_draws(node.output_tokens, seed,
                                                                                          f"{path}.out")
            model = catalog.model(node.model)
            self.fn = lambda: (self._whisper(model, audio(), steps()), 0.0)
        elif isinstance(node, EmbedNode | MemoryLookupNode) and kind in ("embed.encode", "embed", "memory.lookup"):
            model = catalog.model(node.model if isinstance(node, EmbedNode) else node.embed_model)
            tokens = token_draws(node.tokens if isinstance(node, EmbedNode) else node.query_tokens, seed,
                                 f"{path}.tokens")
            search = self._search(node) if isinstance(node, MemoryLookupNode) and kind == "memory.lookup" else 0.0
            self.fn = lambda: (self._encoder(model, tokens()) + search, 0.0)
        elif isinstance(node, MemoryLookupNode) and kind == "ann.search":
            search = self._search(node)
            self.fn = lambda: (search, 0.0)
        elif isinstance(node, MemoryLoadNode | MemoryStoreNode):
            size = dist_draws(node.data_bytes, seed, f"{path}.bytes")
            self.fn = lambda: (memory_io(catalog, self.dev, size()).latency_s, 0.0)
        else:
            raise SimError(f"op kind {kind!r} of node '{path}' has no simulator model")

    def __call__(self) -> tuple[float, float]:
        return self.fn()

    def _encoder(self, model: ModelSpec, tokens: float, steps: float = 0.0) -> float:
        key = (model.name, tokens, steps)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = encoder(self.cat, self.dev, model, tokens, steps).latency_s
        return got

    def _whisper(self, model: ModelSpec, audio_s: float, steps: float) -> float:
        """Whisper encodes whole 30 s windows, then runs one decoder step per output token."""
        return self._encoder(model, whisper_frames(audio_s), steps)

    def _search(self, node: MemoryLookupNode) -> float:
        return vector_search(self.cat, self.dev, node.index_vectors, node.dimension, node.k, node.index).latency_s
