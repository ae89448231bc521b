"""Candidate device configurations per op, priced by the cost layer: paper §3.1's θ and t as `#tz.cand`.

LLM phases come from cost.candidates.llm_candidates; embedding, vector search and host code from
cost.cpu_ops; memory traffic from the roofline. Per device the list keeps the Pareto front of (latency,
dollars per request) — a dominated candidate is never the cheapest under any latency limit — and, for a
device with nothing feasible, the closest miss with its reason, so the planner can explain what binds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import DTYPE_BYTES, Device, ModelSpec, TcoProfile
from terrazzo.cost.candidates import Candidate, llm_candidates
from terrazzo.cost.llm import USABLE_MEMORY_FRACTION
from terrazzo.cost.roofline import Estimate
from terrazzo.cost.tco import device_usd_per_hour
from terrazzo.cost.work import (
    HTTP_WAITS_PER_CORE,
    encoder,
    host_code,
    memory_io,
    tensor_dtype,
    vector_search,
    whisper_frames,
)
from terrazzo.errors import CatalogError, IRError, TerrazzoError
from terrazzo.ir.attributes import CandidateAttr, DistAttr
from terrazzo.ir.context import TerrazzoContext
from terrazzo.ir.dialects import agent_dialect as A
from terrazzo.ir.dialects import granular_dialect as G
from terrazzo.ir.dialects.node_op import NodeOp, float_prop, int_prop, str_prop
from terrazzo.spec.cluster import Cluster, Fabric
from terrazzo.spec.sla import Sla

DEFAULT_DEVICES = ("h100", "b200", "gaudi3", "mi300x", "a100", "a40", "epyc-9654")  # the paper's set + a CPU
HNSW_GRAPH_BYTES_PER_VECTOR = 2 * 32 * 4  # level-0 links: 2·M int32 neighbours, M = 32
LLM_PHASES = (G.PrefillOp, G.DecodeOp, G.MoeExpertOp)


@dataclass
class CostModel:
    """What estimate-cost prices against: devices, fabric, TCO profile and (optionally) an SLA."""

    catalog: Catalog
    devices: list[str]
    tco: TcoProfile
    fabric: Fabric = field(default_factory=Fabric)
    price_profile: str | None = None
    sla: Sla | None = None
    keep_all: bool = False
    _llm: dict[tuple, list[Candidate]] = field(default_factory=dict)
    _done: dict[tuple, list[CandidateAttr]] = field(default_factory=dict)

    @classmethod
    def for_context(cls, ctx: TerrazzoContext, keep_all: bool = False) -> CostModel:
        """Over the context's cluster (or the default devices), priced with its catalog, limited by its SLA."""
        spec, catalog = ctx.cluster or Cluster(devices=list(DEFAULT_DEVICES)), ctx.catalog
        try:
            devices = list(dict.fromkeys(catalog.device(d).name for d in spec.device_types))
            return cls(catalog, devices, catalog.tco_profile(spec.tco_profile), spec.fabric, spec.price_profile,
                       ctx.sla, keep_all)
        except TerrazzoError as exc:  # catalog errors keep their message
            raise IRError(str(exc)) from None

    @classmethod
    def on(cls, catalog: Catalog, devices: list[str]) -> CostModel:
        """A cost model over `devices` with the default TCO profile (for checks that need no prices)."""
        return cls(catalog, devices, catalog.tco_profile(Cluster.model_fields["tco_profile"].default), keep_all=True)

    @cached_property
    def usd_h(self) -> dict[str, float]:
        return {d: device_usd_per_hour(self.catalog, d, self.tco, self.price_profile).usd_h for d in self.devices}

    def device(self, name: str) -> Device:
        return self.catalog.device(name)

    def model(self, op: NodeOp, prop: str = "model") -> ModelSpec:
        name = str_prop(op, prop)
        try:
            return self.catalog.model(name or "")
        except CatalogError as exc:
            raise IRError(f"{op.name} '{op.node_id}': {str(exc).split(' Known:')[0]}") from None

    # -----------------------------------------------------------------------------------------------------

    def candidates(self, op: NodeOp) -> list[CandidateAttr] | None:
        """Candidates for `op`, or None for ops that are not placed on their own (routers, riders, transfers)."""
        rule = _RULES.get(type(op))
        if rule is None:
            return None
        # Ops with the same fields (and SLA limits) get the same, immutable, list: compile time stays
        # proportional to the distinct configurations, not to the graph's size.
        key = (type(op), tuple(sorted(op.common_props().items())), self._limits(op))
        if key not in self._done:
            cands = rule(self, op)
            self._done[key] = cands if self.keep_all else prune(cands)
        return self._done[key]

    def _limits(self, op: NodeOp) -> tuple[float | None, float | None]:
        if self.sla is None or not isinstance(op, (*LLM_PHASES, A.LlmCallOp)):
            return (None, None)
        limits = self.sla.limits_for(op.node_id.split(".")[0])
        return (limits.ttft_s, limits.tbt_s)

    def llm(self, op: NodeOp) -> list[Candidate]:
        isl = _mean(op, "input_tokens")
        osl = _mean(op, "output_tokens")
        model = self.model(op).name
        dtype = str_prop(op, "dtype") or "bf16"
        ttft, tbt = self._limits(op)
        key = (model, dtype, isl, osl, ttft, tbt)
        if key not in self._llm:
            self._llm[key] = llm_candidates(self.catalog, model, dtype, isl, osl, self.devices, self.tco, self.fabric,
                                            ttft_s=ttft, tbt_s=tbt, price_profile=self.price_profile)
        return self._llm[key]

    def per_device(self, op: NodeOp, estimate: Callable[[Device], tuple[Estimate, float, float] | str]
                   ) -> list[CandidateAttr]:
        """One candidate per device from `estimate(device)` → (estimate, requests/s, memory bytes) or a reason."""
        out = []
        for name in self.devices:
            dev = self.device(name)
            got = estimate(dev)
            if isinstance(got, str):
                out.append(rejected(name, self.usd_h[name], got))
                continue
            est, rps, mem = got
            capacity = dev.memory_gb.value * 1e9 * USABLE_MEMORY_FRACTION
            why = f"needs {mem / 1e9:.1f} GB, {capacity / 1e9:.1f} GB usable" if mem > capacity else ""
            out.append(CandidateAttr.make(device=name, latency_s=est.latency_s, span_s=est.latency_s,
                                          requests_per_s=rps if not why else 0.0, memory_bytes=mem,
                                          usd_h=self.usd_h[name], bound=est.bound, infeasible=why,
                                          source=est.source))
        return out


def rejected(device: str, usd_h: float, reason: str, **config: int) -> CandidateAttr:
    return CandidateAttr.make(device=device, latency_s=math.inf, span_s=math.inf, requests_per_s=0.0,
                              memory_bytes=0.0, usd_h=usd_h, infeasible=reason, **config)


def prune(cands: list[CandidateAttr]) -> list[CandidateAttr]:
    """Per device: the feasible Pareto front on (latency_s, $/request), or the closest miss if none is feasible."""
    out: list[CandidateAttr] = []
    for device in dict.fromkeys(c.device.data for c in cands):
        mine = [c for c in cands if c.device.data == device]
        ok = sorted((c for c in mine if c.feasible), key=lambda c: (c.latency_s.data, c.usd_per_request))
        if ok:
            best = math.inf
            for c in ok:
                if c.usd_per_request < best:
                    out.append(c)
                    best = c.usd_per_request
        else:
            fits = [c for c in mine if "GB" not in c.infeasible.data and math.isfinite(c.latency_s.data)]
            out.append(min(fits, key=lambda c: c.latency_s.data) if fits
                       else min(mine, key=lambda c: (c.memory_bytes.data or math.inf, c.tp.data * c.pp.data)))
    return out


def _mean(op: NodeOp, prop: str) -> float:
    attr = op.properties[prop]
    assert isinstance(attr, DistAttr)
    return attr.mean_value


def _from_llm(c: Candidate, osl: float) -> CandidateAttr:
    span = c.latency_s * (osl if c.phase == "decode" else 1.0)
    if not c.feasible:
        return CandidateAttr.make(device=c.device, tp=c.tp, pp=c.pp, batch=max(c.batch, 1), latency_s=c.latency_s,
                                  span_s=span, requests_per_s=c.requests_per_s, tokens_per_s=c.tokens_per_s,
                                  memory_bytes=c.memory_bytes, usd_h=c.usd_h, bound=c.bound,
                                  infeasible=c.reason or "infeasible", source=c.source, engine=c.engine,
                                  engine_version=c.engine_version)
    return CandidateAttr.make(device=c.device, tp=c.tp, pp=c.pp, batch=c.batch, latency_s=c.latency_s, span_s=span,
                              requests_per_s=c.requests_per_s, tokens_per_s=c.tokens_per_s,
                              memory_bytes=c.memory_bytes, usd_h=c.usd_h, bound=c.bound, source=c.source,
                              engine=c.engine, engine_version=c.engine_version)


def _llm_phase(cm: CostModel, op: NodeOp) -> list[CandidateAttr]:
    phases: dict[type[NodeOp], str] = {G.PrefillOp: "prefill", G.DecodeOp: "decode"}
    phase = phases.get(type(op)) or str_prop(op, "phase")
    osl = _mean(op, "output_tokens")
    return [_from_llm(c, osl) for c in cm.llm(op) if c.phase == phase]


def _llm_aggregated(cm: CostModel, op: NodeOp) -> list[CandidateAttr]:
    """Prefill and decode on the same replicas: TTFT of a lone prompt, then decode steps stretched by
    the prefills of newcomers interleaved with them (cost.candidates.aggregated_tbt_s)."""
    cands = cm.llm(op)
    osl = _mean(op, "output_tokens")
    ttft = {(c.device, c.tp, c.pp): c.latency_s for c in cands if c.phase == "prefill" and c.batch == 1}
    out = []
    for c in (c for c in cands if c.phase == "aggregated"):
        first = ttft.get((c.device, c.tp, c.pp), c.latency_s)
        fields: dict[str, str | float]
        fields = dict(device=c.device, tp=c.tp, pp=c.pp, batch=max(c.batch, 1), latency_s=c.latency_s,
                      span_s=first + osl * c.latency_s, requests_per_s=c.requests_per_s if c.feasible else 0.0,
                      tokens_per_s=c.tokens_per_s, memory_bytes=c.memory_bytes, usd_h=c.usd_h, bound=c.bound,
                      source=c.source, engine=c.engine, engine_version=c.engine_version)
        out.append(CandidateAttr.make(**fields, **({} if c.feasible else {"infeasible": c.reason or "infeasible"})))
    return out


def _cores(dev: Device) -> float:
    return dev.cores.value if dev.cores else 1.0


def _host_code(cm: CostModel, cpu_s: float) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        if dev.kind != "cpu":
            return "host code: needs a CPU device"
        est = host_code(cm.catalog, dev, cpu_s)
        return est, _cores(dev) / max(est.latency_s, 1e-9), 0.0
    return estimate


def _http_wait(latency_s: float) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        if dev.kind != "cpu":
            return "an HTTP call waits on a host: needs a CPU device"
        wait = Estimate(0.0, 0.0, comm_s=latency_s)
        return wait, HTTP_WAITS_PER_CORE * _cores(dev) / max(latency_s, 1e-6), 0.0
    return estimate


def _encoder(cm: CostModel, model: ModelSpec, tokens: float, steps: float = 0.0
             ) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    """An encoder pass over `tokens`, plus `steps` weight-streaming decoder steps (Whisper's text decoder)."""
    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        dtype = tensor_dtype(dev)
        if dev.tflops(dtype) is None:
            return f"{dev.name} has no {dtype} peak in the catalog"
        est = encoder(cm.catalog, dev, model, tokens, steps)  # measured points where a profile has them
        return est, 1.0 / est.latency_s, model.total_params * DTYPE_BYTES[dtype]
    return estimate


def _index_search(cm: CostModel, vectors: int, dim: int, k: int, index: str
                  ) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    index_bytes = vectors * dim * 4.0 + (vectors * HNSW_GRAPH_BYTES_PER_VECTOR if index == "hnsw" else 0.0)

    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        if dev.tflops("fp32") is None:
            return f"{dev.name} has no fp32 peak in the catalog"
        est = vector_search(cm.catalog, dev, vectors, dim, k, index)
        return est, 1.0 / est.latency_s, index_bytes
    return estimate


def _memory_io(cm: CostModel, data_bytes: float) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        est = memory_io(cm.catalog, dev, data_bytes)
        return est, 1.0 / est.latency_s, data_bytes
    return estimate


def _chain(*parts: Callable[[Device], tuple[Estimate, float, float] | str]
           ) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    """Steps run one after the other on one device: latencies add, the slowest step sets the rate."""
    def estimate(dev: Device) -> tuple[Estimate, float, float] | str:
        got = [p(dev) for p in parts]
        reasons = [g for g in got if isinstance(g, str)]
        if reasons:
            return reasons[0]
        ests = [g for g in got if not isinstance(g, str)]
        total = ests[0][0]
        for e, _, _ in ests[1:]:
            total = total + e
        return total, min(r for _, r, _ in ests), sum(m for _, _, m in ests)
    return estimate


def _tool(cm: CostModel, op: NodeOp, with_lookup: bool) -> Callable[[Device], tuple[Estimate, float, float] | str]:
    wait = _mean(op, "latency_s")
    run = _http_wait(wait) if str_prop(op, "protocol") == "http" else _host_code(cm, wait)
    return _chain(_host_code(cm, _mean(op, "cpu_s")), run) if with_lookup else run


def _stt(cm: CostModel, op: NodeOp) -> list[CandidateAttr]:
    frames = whisper_frames(_mean(op, "audio_s"))
    return cm.per_device(op, _encoder(cm, cm.model(op), frames, _mean(op, "output_tokens")))


def _tts(cm: CostModel, op: NodeOp) -> list[CandidateAttr]:
    tokens = _mean(op, "input_tokens")
    if str_prop(op, "model"):
        return cm.per_device(op, _encoder(cm, cm.model(op), tokens))
    return cm.per_device(op, _host_code(cm, tokens * float_prop(op, "cpu_s_per_token")))


def _lookup(cm: CostModel, op: NodeOp) -> list[CandidateAttr]:
    embed = _encoder(cm, cm.model(op, "embed_model"), _mean(op, "query_tokens"))
    search = _index_search(cm, int_prop(op, "index_vectors"), int_prop(op, "dimension"), int_prop(op, "k"),
                           str_prop(op, "index") or "ivf")
    return cm.per_device(op, _chain(embed, search))


_RULES: dict[type[NodeOp], Callable[[CostModel, NodeOp], list[CandidateAttr]]] = {
    G.PrefillOp: _llm_phase,
    G.DecodeOp: _llm_phase,
    G.MoeExpertOp: _llm_phase,
    A.LlmCallOp: _llm_aggregated,
    A.SttOp: _stt,
    A.TtsOp: _tts,
    A.ComputeOp: lambda cm, op: cm.per_device(op, _host_code(cm, _mean(op, "cpu_s"))),
    G.ToolLookupOp: lambda cm, op: cm.per_device(op, _host_code(cm, _mean(op, "cpu_s"))),
    G.ToolComputeOp: lambda cm, op: cm.per_device(op, _tool(cm, op, with_lookup=False)),
    A.ToolInvokeOp: lambda cm, op: cm.per_device(op, _tool(cm, op, with_lookup=True)),
    G.EmbedEncodeOp: lambda cm, op: cm.per_device(op, _encoder(cm, cm.model(op), _mean(op, "tokens"))),
    A.EmbedOp: lambda cm, op: cm.per_device(op, _encoder(cm, cm.model(op), _mean(op, "tokens"))),
    G.AnnSearchOp: lambda cm, op: cm.per_device(op, _index_search(
        cm, int_prop(op, "index_vectors"), int_prop(op, "dimension"), int_prop(op, "k"),
        str_prop(op, "index") or "ivf")),
    A.MemoryLookupOp: _lookup,
    G.MemLoadOp: lambda cm, op: cm.per_device(op, _memory_io(cm, _mean(op, "data_bytes"))),
    G.MemStoreOp: lambda cm, op: cm.per_device(op, _memory_io(cm, _mean(op, "data_bytes"))),
    A.MemoryLoadOp: lambda cm, op: cm.per_device(op, _memory_io(cm, _mean(op, "data_bytes"))),
    A.MemoryStoreOp: lambda cm, op: cm.per_device(op, _memory_io(cm, _mean(op, "data_bytes"))),
}
PLACEABLE = tuple(_RULES)
