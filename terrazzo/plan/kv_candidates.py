"""Prefix reuse in the plan: per reusing edge, recompute / retain on the replica / offload to host / to disk.

An LLM call whose prefix came before (a loop iteration after a tool call, a chat turn after the user's
think time, a system prompt shared by calls) can prefill only its new tokens when the prefix's KV is at
hand. Each policy is a priced variant of every candidate of the call's first-token op (prefill or
aggregated), so the MILP's choice among candidates is the choice per edge and stays linear:

- recompute: the full prefill (today's price);
- retain: the prefix stays in HBM for its hold time; by Little's law the pool holds λ·hit·bytes·hold of
  it, and its replicas must find that room beside the batch they run (more batch, less room), so the
  pool may need more replicas (`kv_replicas`);
- host / disk: the prefix waits in host DRAM or on NVMe (their capacity per device bounds the pool the
  same way) and the next call pays the transfer back on its first token (bytes / link + latency).

A hit's prefill is cost/reuse_calibration.cached_prefill_s (the cold prefill model on the new tokens with
attention over the whole context, plus the read term a profile's reuse points measured), the simulator's
price; a tier's read-back is cost/kv_tiers.replica_read_back_s, the simulator's too. The planned hit rate
is the share of calls that have a prefix to reuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from terrazzo.cost.kv_tiers import TierLink, replica_read_back_s
from terrazzo.plan.check import Share, check
from terrazzo.plan.fleet_model import kv_replicas
from terrazzo.plan.kv_choice import POLICIES, KvChoice
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp

__all__ = ["POLICIES", "KvChoice", "KvSite", "Tier", "kv_entries", "kv_replicas", "policy_of", "with_kv_options"]



@dataclass(frozen=True)
class Tier:
    """Where an offloaded prefix waits: its read-back link (cost/kv_tiers.py) and bytes per device."""

    link: TierLink
    capacity_bytes_per_device: float
    source: str

    @property
    def bw_bytes_s(self) -> float:
        return self.link.bw_bytes_s

    @property
    def latency_s(self) -> float:
        return self.link.latency_s


# What each device's replica can park off its HBM (bytes per device); read-back links: cost/kv_tiers.py.
HOST_DRAM_BYTES_PER_DEVICE = (256e9, "derived: 2 TB of host DRAM per 8 GPUs (NVIDIA DGX H100 datasheet, "
                                     "https://www.nvidia.com/en-us/data-center/dgx-h100/) = 256 GB per device")
NVME_BYTES_PER_DEVICE = (3.84e12, "derived: 8x 3.84 TB U.2 NVMe per 8 GPUs (NVIDIA DGX H100 datasheet, "
                                  "https://www.nvidia.com/en-us/data-center/dgx-h100/) = 3.84 TB per device")


def catalog_tiers(catalog: Any) -> Callable[[str], tuple[Tier, Tier]]:
    """Host and disk tiers of a device: cost/kv_tiers.py's read-back links, the capacities above."""
    from terrazzo.cost.kv_tiers import tier_link

    def tiers(device: str) -> tuple[Tier, Tier]:
        dev = catalog.device(device)
        host, disk = tier_link(dev, "host"), tier_link(dev, "disk")
        return (Tier(host, HOST_DRAM_BYTES_PER_DEVICE[0], f"{host.source}; capacity {HOST_DRAM_BYTES_PER_DEVICE[1]}"),
                Tier(disk, NVME_BYTES_PER_DEVICE[0], f"{disk.source}; capacity {NVME_BYTES_PER_DEVICE[1]}"))

    return tiers


@dataclass(frozen=True)
class KvSite:
    """A first-token op whose calls can reuse a prefix: `prefix_tokens` reused per hit (mean),
    `new_tokens` computed in any case, `hold_s` how long a prefix waits for its next call, `hit_rate`
    the share of calls with a prefix, `edge` the reusing edge in words, `tbt_limit_s` the call's."""

    op: str
    node: str
    prefix_tokens: float
    new_tokens: float
    hold_s: float
    hit_rate: float
    edge: str
    tbt_limit_s: float | None = None

    @property
    def full_tokens(self) -> float:
        return self.prefix_tokens + self.new_tokens


@dataclass(frozen=True)
class Priced:
    """The cost model's times for one candidate, at the full input: a prefill (the candidate's batch of
    prompts; an aggregated replica's lone prompt) with a prefix recomputed (`full_s`) or reused
    (`hit_s`), one without a prefix (`miss_s`); for an aggregated replica also its decode step at the
    full context (`step_s`) and one request's share of the batched prefills that stretch it (`share_*`).
    `prefix_bytes`: one prefix's KV on the replica; `room_bytes`: HBM left beside the running batch."""

    full_s: float
    hit_s: float
    miss_s: float
    prefix_bytes: float
    room_bytes: float
    devices: int
    batch: int = 1  # prompts per prefill batch: each brings its own prefix back from a tier
    step_s: float | None = None
    share_full_s: float = 0.0
    share_hit_s: float = 0.0
    share_miss_s: float = 0.0


Pricer = Callable[[PlanOp, OpCandidate, KvSite], "Priced | None"]


def with_kv_options(graph: PlanningGraph, sites: Mapping[str, KvSite], price: Pricer,
                    tiers: Callable[[str], tuple[Tier, Tier]], reuse: bool = True) -> PlanningGraph:
    """The graph with every site op's candidates re-priced at the full input (recompute) and, with
    `reuse`, each also as retain / host / disk. A candidate the pricer cannot price keeps its IR price."""
    if not sites:
        return graph
    ops = []
    for o in graph.ops:
        site = sites.get(o.name)
        if site is None:
            ops.append(o)
            continue
        out: list[OpCandidate] = []
        extra: list[OpCandidate] = []
        for c in o.candidates:
            p = price(o, c, site) if c.feasible else None
            if p is None:
                out.append(c)
                continue
            out.append(_repriced(o, c, p, site, _choice("recompute", site, p)))
            if reuse and site.hit_rate > 0 and site.prefix_tokens > 0:
                host, disk = tiers(c.device)
                # a prefix that never waits (a shared prompt only) parks nothing: retain beats both tiers
                offload = (("host", host), ("disk", disk)) if site.hold_s > 0 else ()
                for policy, tier in (("retain", None), *offload):
                    ch = _choice(policy, site, p, tier)
                    if ch.room_bytes > 0:
                        extra.append(_repriced(o, c, p, site, ch))
        ops.append(replace(o, candidates=tuple(out + extra)))
    return replace(graph, ops=tuple(ops))


def _repriced(o: PlanOp, c: OpCandidate, p: Priced, site: KvSite, ch: KvChoice) -> OpCandidate:
    """`c` priced under policy `ch`: its prefill the mix of hits and misses (a hit also waits for its
    prefix's transfer back), and for an aggregated replica the decode steps its batch-mates' prefills
    stretch; rate = slots / span as everywhere (planning_graph.llm_capacity)."""
    h = site.hit_rate
    reused = ch.policy != "recompute"
    prefill_s = (1 - h) * p.miss_s + h * ((p.hit_s + ch.transfer_s) if reused else p.full_s)
    if o.kind != "llm.aggregated" or p.step_s is None:
        span, first, tbt = prefill_s, prefill_s, c.tbt_s
    else:
        share = (1 - h) * p.share_miss_s + h * (p.share_hit_s if reused else p.share_full_s)
        osl = max(o.output_tokens, 1.0)
        tbt = p.step_s + share * c.batch / osl
        span, first = prefill_s + osl * tbt, prefill_s + tbt
    feasible, reason = c.feasible, c.reason
    if site.tbt_limit_s is not None and tbt is not None and tbt > site.tbt_limit_s * (1 + 1e-9):
        feasible, reason = False, (f"TBT {tbt * 1e3:.1f} ms at the full {site.full_tokens:,.0f}-token context "
                                   f"({ch.policy}) > {site.tbt_limit_s * 1e3:.4g} ms limit")
    rate = c.slots / span if span > 0 else 0.0
    return replace(c, latency_s=span, hold_s=span, first_token_s=first if c.first_token_s is not None else None,
                   tbt_s=tbt, rate_per_s=rate, feasible=feasible, reason=reason, kv=ch)


def _choice(policy: str, site: KvSite, p: Priced, tier: Tier | None = None) -> KvChoice:
    common = dict(prefix_tokens=site.prefix_tokens, new_tokens=site.new_tokens, hold_s=site.hold_s,
                  hit_rate=site.hit_rate, edge=site.edge, kv_bytes=p.prefix_bytes)
    if policy == "recompute":
        return KvChoice(policy, **common)  # type: ignore[arg-type]
    parked = site.hit_rate * p.prefix_bytes * site.hold_s
    saved = p.full_s - p.hit_s
    if tier is None:
        return KvChoice(policy, saved_s=saved, byte_s_per_visit=parked, room_bytes=p.room_bytes,
                        **common)  # type: ignore[arg-type]
    # every device reads its own shard over its own host link, in parallel (the simulator's function too)
    transfer = replica_read_back_s(tier.link, p.batch * p.prefix_bytes, max(p.devices, 1))
    return KvChoice(policy, transfer_s=transfer, saved_s=saved, byte_s_per_visit=parked,
                    room_bytes=tier.capacity_bytes_per_device * p.devices, **common)  # type: ignore[arg-type]


def policy_of(c: OpCandidate) -> str:
    return c.kv.policy if c.kv is not None else "recompute"


# --------------------------------------------------------------------------------- the cost model's prices


def cost_model_pricer(catalog: Any, fabric: Any) -> Pricer:
    """Prices a site's candidates with terrazzo.cost: the same deployment the IR priced."""
    from terrazzo.cost.candidates import deployment
    from terrazzo.cost.kv_reuse_pricing import replica_kv_bytes
    from terrazzo.cost.llm import (
        PREFILL_TOKEN_BUDGET,
        USABLE_MEMORY_FRACTION,
        decode_step,
        mean_decode_context,
        memory_use,
        prefill,
    )
    from terrazzo.cost.reuse_calibration import ReadTerm, cached_prefill_s, read_term
    from terrazzo.errors import CostError

    deps: dict[tuple, Any] = {}
    cache: dict[tuple, Priced | None] = {}

    reads: dict[tuple, ReadTerm] = {}

    def hit_and_full(dep: Any, full: int, new: float, prefix: float, b: int) -> tuple[float, float]:
        """(cold prefill of the full input, prefill of the new tokens behind the resident prefix: the
        simulator's price, measured reuse points included)."""
        n = max(round(new), 1)
        dkey = (dep.model.name, dep.device.name, dep.dtype, dep.tp, dep.pp)
        if dkey not in reads:
            reads[dkey] = read_term(catalog, dep)
        return (prefill(dep, max(full, 1), b).latency_s,
                cached_prefill_s(dep, n, max(full - n, 0), b, reads[dkey]))

    def price(o: PlanOp, c: OpCandidate, site: KvSite) -> Priced | None:
        if not o.model or not o.dtype:
            return None
        key = (o.model, o.dtype, c.device, c.tp, c.pp, c.batch, o.kind, site.prefix_tokens, site.new_tokens,
               site.hit_rate, o.output_tokens)  # twins of a large agent share the price
        if key in cache:
            return cache[key]
        dkey = (o.model, o.dtype, c.device, c.tp, c.pp)
        if dkey not in deps:
            try:
                deps[dkey] = deployment(catalog, o.model, c.device, o.dtype, c.tp, c.pp, fabric)
            except CostError:
                deps[dkey] = None
        dep = deps[dkey]
        if dep is None:
            cache[key] = None
            return None
        agg = o.kind == "llm.aggregated"
        b = 1 if agg else c.batch
        full, new, prefix = round(site.full_tokens), site.new_tokens, site.prefix_tokens
        full_s, hit_s = hit_and_full(dep, full, new, prefix, b)
        miss_s = prefill(dep, max(round(new), 1), b).latency_s if site.hit_rate < 1 else 0.0
        context = full + (o.output_tokens if agg else 0.0)
        used = memory_use(dep, c.batch, context, prefill_tokens=full * b).total
        room = (dep.device.memory_gb.value * 1e9 * USABLE_MEMORY_FRACTION - used) * dep.devices
        kv = replica_kv_bytes(dep, prefix)  # on the replica's devices, replicated KV heads counted
        extra: dict[str, float] = {}
        if agg:  # the engine packs prompts up to its token budget: one request's share of a packed prefill
            together = max(1, min(c.batch, PREFILL_TOKEN_BUDGET // max(full, 1)))
            sf, sh = hit_and_full(dep, full, new, prefix, together)
            sm = (prefill(dep, max(round(new), 1), together).latency_s if site.hit_rate < 1 else 0.0)
            extra = dict(step_s=decode_step(dep, c.batch, mean_decode_context(full, o.output_tokens)).latency_s,
                         share_full_s=sf / together, share_hit_s=sh / together, share_miss_s=sm / together)
        cache[key] = Priced(full_s, hit_s, miss_s, kv, room, dep.devices, b, **extra)
        return cache[key]

    return price


# ------------------------------------------------------------------------------------- what a plan chose


def kv_entries(graph: PlanningGraph, a: Any, usd_h: float) -> dict[str, dict[str, Any]]:
    """op → the plan file's `kv` entry for every placed op whose candidate carries a reuse choice, with
    its $/h saving against recompute: the cheapest plan that recomputes this op's prefix, every other
    op where it is, less `usd_h` (None when no recompute candidate passes the check)."""
    out: dict[str, dict[str, Any]] = {}
    for name, shares in a.placements.items():
        o = graph.op(name)
        main = max(shares, key=lambda s: s.share)
        ch = o.candidates[main.candidate].kv
        if ch is None:
            continue
        saving: float | None = 0.0
        if ch.policy != "recompute":
            alt = [check(graph, type(a)({**a.placements, name: (Share(k, 1.0),)}, {}))
                   for k, c in enumerate(o.candidates)
                   if c.feasible and c.device in graph.cluster_devices and policy_of(c) == "recompute"]
            ok = [v.usd_h for v in alt if v.ok]
            saving = min(ok) - usd_h if ok else None
        out[name] = ch.entry(saving)
    return out
