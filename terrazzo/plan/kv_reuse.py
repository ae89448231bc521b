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

A hit's prefill is priced on its new tokens attending over the whole context: the full prefill's
non-static time scaled by FLOPs(new | prefix) / FLOPs(full) (prefill is compute-bound), plus the
static step overhead. The planned hit rate is the share of calls that have a prefix to reuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp

POLICIES = ("recompute", "retain", "host", "disk")
TIER_OF = {"recompute": "-", "retain": "HBM", "host": "host DRAM", "disk": "NVMe"}


@dataclass(frozen=True)
class Tier:
    """Where an offloaded prefix waits: its read-back bandwidth and latency, and bytes per device."""

    bw_bytes_s: float
    latency_s: float
    capacity_bytes_per_device: float
    source: str


# Fallback tier figures (used when the cost model has none for a device), one sourced figure each.
HOST_TIER = Tier(63.0e9, 10e-6, 256e9,
                 "derived: PCIe Gen5 x16 = 32 GT/s x 16 lanes x 128/130 / 8 = 63 GB/s per direction; host DRAM "
                 "2 TB per 8 GPUs (NVIDIA DGX H100 datasheet, https://www.nvidia.com/en-us/data-center/dgx-h100/)")
DISK_TIER = Tier(7.0e9, 100e-6, 3.84e12,
                 "NVMe Gen4 sequential read ~7 GB/s (Samsung PM9A3 U.2 datasheet 6.9 GB/s, "
                 "https://semiconductor.samsung.com/ssd/datacenter-ssd/pm9a3/); 8x 3.84 TB per 8 GPUs "
                 "(NVIDIA DGX H100 datasheet); ~100 us read latency: judgement")


@dataclass(frozen=True)
class KvSite:
    """A first-token op whose calls can reuse a prefix: `prefix_tokens` reused per hit (mean),
    `new_tokens` computed in any case, `priced_tokens` what the IR priced the op's prefill on,
    `hold_s` how long a prefix waits for its next call, `hit_rate` the share of calls with a prefix,
    `edge` the reusing edge in words."""

    op: str
    node: str
    prefix_tokens: float
    new_tokens: float
    priced_tokens: float
    hold_s: float
    hit_rate: float
    edge: str

    @property
    def full_tokens(self) -> float:
        return self.prefix_tokens + self.new_tokens


@dataclass(frozen=True)
class KvChoice:
    """One policy on one candidate: what it adds to a call (`transfer_s`, on a hit), the prefill time a
    hit saves against recompute (`saved_s`, per batch), the byte-seconds of prefix one visit parks
    (`byte_s_per_visit`) and the room one replica has for them (`room_bytes`; inf: unbounded)."""

    policy: str
    prefix_tokens: float
    new_tokens: float
    hold_s: float
    hit_rate: float
    edge: str
    transfer_s: float = 0.0
    saved_s: float = 0.0
    byte_s_per_visit: float = 0.0
    room_bytes: float = math.inf
    kv_bytes: float = 0.0  # of one prefix, whole replica

    @property
    def tier(self) -> str:
        return TIER_OF[self.policy]

    def entry(self, saving_usd_h: float | None) -> dict[str, Any]:
        """The plan file's per-op `kv` entry (plan_file.KV_POLICIES)."""
        return {"policy": self.policy, "prefix_tokens": self.prefix_tokens, "new_tokens": self.new_tokens,
                "hold_s": self.hold_s, "hit_rate": self.hit_rate, "saving_usd_h": saving_usd_h,
                "tier": self.tier, "transfer_s": self.transfer_s, "edge": self.edge}


@dataclass(frozen=True)
class Priced:
    """What the cost model says of one candidate's prefill batch: full, IR-priced and hit time (s), one
    prefix's KV bytes on the replica, and HBM room left beside the batch (bytes per replica)."""

    full_s: float
    priced_s: float
    hit_s: float
    prefix_bytes: float
    room_bytes: float
    devices: int
    batch: int = 1  # prompts per prefill batch: each brings its own prefix back from a tier


Pricer = Callable[[PlanOp, OpCandidate, KvSite], "Priced | None"]


def with_kv_options(graph: PlanningGraph, sites: Mapping[str, KvSite], price: Pricer,
                    tiers: Callable[[str], tuple[Tier, Tier]] = lambda d: (HOST_TIER, DISK_TIER),
                    reuse: bool = True) -> PlanningGraph:
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
            base = _shifted(c, p.full_s - p.priced_s)
            out.append(replace(base, kv=_choice("recompute", site, p)))
            if reuse and site.hit_rate > 0 and site.prefix_tokens > 0:
                host, disk = tiers(c.device)
                for policy, tier in (("retain", None), ("host", host), ("disk", disk)):
                    ch = _choice(policy, site, p, tier)
                    delta = site.hit_rate * (p.hit_s + ch.transfer_s - p.full_s)
                    if ch.room_bytes > 0:
                        extra.append(replace(_shifted(c, p.full_s - p.priced_s + delta), kv=ch))
        ops.append(replace(o, candidates=tuple(out + extra)))
    return replace(graph, ops=tuple(ops))


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
    # every device reads its own shard over its own host link, in parallel
    transfer = tier.latency_s + p.batch * p.prefix_bytes / (tier.bw_bytes_s * max(p.devices, 1))
    return KvChoice(policy, transfer_s=transfer, saved_s=saved, byte_s_per_visit=parked,
                    room_bytes=tier.capacity_bytes_per_device * p.devices, **common)  # type: ignore[arg-type]


def _shifted(c: OpCandidate, delta_s: float) -> OpCandidate:
    """`c` with its prefill `delta_s` longer (shorter when negative): latency, first token, slot hold
    and so rate move together; a decode step (TBT) does not."""
    if delta_s == 0:
        return c
    latency = max(c.latency_s + delta_s, 1e-9)
    hold = None if c.hold_s is None else max(c.hold_s + delta_s, 1e-9)
    first = None if c.first_token_s is None else max(c.first_token_s + delta_s, 1e-9)
    slot = latency if hold is None else hold
    rate = c.rate_per_s * c.slot_s / slot if c.rate_per_s > 0 and math.isfinite(c.rate_per_s) else c.rate_per_s
    return replace(c, latency_s=latency, hold_s=hold, first_token_s=first, rate_per_s=rate)


def kv_replicas(graph: PlanningGraph, op: str, c: OpCandidate, share: float = 1.0) -> int:
    """Replicas a pool needs to park its prefixes: λ · byte-seconds per visit over each replica's room."""
    ch = c.kv
    if ch is None or ch.policy == "recompute" or ch.byte_s_per_visit <= 0:
        return 0
    resident = graph.rate_per_s * graph.op(op).visits * share * ch.byte_s_per_visit
    if not math.isfinite(ch.room_bytes):
        return 1
    return max(1, math.ceil(resident / ch.room_bytes - 1e-9)) if ch.room_bytes > 0 else 1_000_000_000


def policy_of(c: OpCandidate) -> str:
    return c.kv.policy if c.kv is not None else "recompute"


# --------------------------------------------------------------------------------- the cost model's prices


def hit_prefill_s(full_s: float, static_s: float, flops_full: float, flops_hit: float) -> float:
    """A hit's prefill: the full prefill's non-static time scaled by the FLOPs it still does."""
    if flops_full <= 0:
        return full_s
    return static_s + max(full_s - static_s, 0.0) * flops_hit / flops_full


def cost_model_pricer(catalog: Any, fabric: Any) -> Pricer:
    """Prices a site's candidates with terrazzo.cost: the same deployment the IR priced."""
    from terrazzo.cost.candidates import deployment
    from terrazzo.cost.llm import (
        USABLE_MEMORY_FRACTION,
        attention_flops,
        kv_bytes_per_token,
        memory_use,
        prefill,
    )
    from terrazzo.errors import CostError

    cache: dict[tuple, Priced | None] = {}

    def price(o: PlanOp, c: OpCandidate, site: KvSite) -> Priced | None:
        if not o.model or not o.dtype:
            return None
        key = (o.model, o.dtype, c.device, c.tp, c.pp, c.batch, o.kind, site.full_tokens, site.prefix_tokens,
               site.priced_tokens, o.output_tokens)
        if key in cache:
            return cache[key]
        try:
            dep = deployment(catalog, o.model, c.device, o.dtype, c.tp, c.pp, fabric)
        except CostError:
            cache[key] = None
            return None
        m, b = dep.model, (c.batch if o.kind == "llm.prefill" else 1)
        full, new, prefix = int(round(site.full_tokens)), site.new_tokens, site.prefix_tokens
        est = prefill(dep, max(full, 1), b)
        priced = prefill(dep, max(int(round(site.priced_tokens)), 1), b).latency_s
        flops_full = 2 * m.active_params * full * b + attention_flops(m, full * b, full / 2)
        flops_hit = 2 * m.active_params * new * b + attention_flops(m, new * b, prefix + new / 2)
        hit = hit_prefill_s(est.latency_s, est.static_s, flops_full, flops_hit)
        context = full + (o.output_tokens if o.kind == "llm.aggregated" else 0.0)
        used = memory_use(dep, c.batch, context, prefill_tokens=full * b).total
        room = (dep.device.memory_gb.value * 1e9 * USABLE_MEMORY_FRACTION - used) * dep.devices
        kv = prefix * kv_bytes_per_token(m, dep.kv_dtype or dep.dtype)
        cache[key] = Priced(est.latency_s, priced, hit, kv, room, dep.devices, b)
        return cache[key]

    return price


# ------------------------------------------------------------------------------------- what a plan chose


def kv_entries(graph: PlanningGraph, a: Any, usd_h: float) -> dict[str, dict[str, Any]]:
    """op → the plan file's `kv` entry for every placed op whose candidate carries a reuse choice, with
    its $/h saving against recompute: the cheapest plan that recomputes this op's prefix, every other
    op where it is, less `usd_h` (None when no recompute candidate passes the check)."""
    from terrazzo.plan.check import Share, check

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
        out[name] = ch.entry(saving)  # type: ignore[arg-type]
    return out
