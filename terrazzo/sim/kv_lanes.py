"""KV reuse in the simulator: each LLM replica (lane) keeps a `kv.residency.Residency`, the pool routes
through `kv.routing.Router` with an affinity for the replica holding the longest resident prefix, and
a call whose prefix is resident prefills only its new tokens (attention still over the whole context).

A call's prefix is a chain of segments (`call_chain`): its shared system prompts and contexts (keyed by
name: every node naming it shares them), then one segment per earlier LLM call of its request or
session (keyed by the session and the call's place, so never shared across sessions). Segment sizes
are in whole KV blocks of the pool's scheduler, cut at cumulative token boundaries, as an engine that
caches only full blocks keeps them (vLLM's prefix cache).

The plan's per-op `kv` policy (plan file v2, `ops[].kv.policy`) decides what is retained after a call:
- `recompute` (or no `kv` entry): nothing; every call prefills its full input (the simulator before KV).
- `retain`: the call's context stays on the replica; between two calls of one request (a tool call) it
  is pinned, so no other traffic evicts it, and the pinned blocks are taken from the replica's batch KV.
  Pins are capped at `MAX_PINNED_SHARE` of the replica's KV (past it, the prefix is kept unpinned, LRU).
- `host` / `disk`: after the call its conversation moves down to that tier (the shared prompts stay on
  the device); the next call reads it back, paying bytes ÷ bandwidth + latency before its prefill (the
  replica's host links or local NVMe, every device its own shard: `cost/kv_tiers.replica_read_back_s`, the
  planner's function).
Device residency beyond the pins is LRU within the blocks the running batch leaves free (a paged lane's
residency shrinks as its batch grows, as an engine's prefix cache lives in its free blocks; the batch's
own prefixes are counted in both, so this errs towards eviction): a prefix evicted from the device is
dropped (retain) or moved down (host, disk), so sessions across their think time hit only while the
replica's KV has room. A call looks its prefix up when it is routed, not when it is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from terrazzo.cost.kv_tiers import TierLink, replica_read_back_s
from terrazzo.kv.residency import DEVICE, DISK, HOST, TIERS, Match, Residency, Segment, TierSpec, prefix_affinity
from terrazzo.kv.routing import AFFINITY_SLACK_TOKENS, ReplicaLoad, Router

KV_POLICIES = ("recompute", "retain", "host", "disk")
MAX_PINNED_SHARE = 0.5  # of a replica's KV blocks: the rest stays for the running batch


@dataclass(frozen=True)
class KvOpPolicy:
    """One LLM op's `kv` entry in the plan."""

    policy: str = "recompute"
    hit_rate: float | None = None  # what the planner expects, for the report

    @property
    def reuses(self) -> bool:
        return self.policy != "recompute"


@dataclass
class Shared:
    """A shared prefix of a node: its name and size."""

    name: str
    tokens: int


def call_chain(shared: Sequence[Shared], session: Any, history: Sequence[tuple[int, int]], block_size: int,
               extra: tuple[int, int] | None = None) -> tuple[list[Segment], int]:
    """The prefix chain of one call: (segments, prefix tokens). `history`: (new input, output) of the earlier
    LLM calls of the request and session, oldest first; `extra`: one more call appended (the call itself,
    once it is done, so that the next call finds it)."""
    names = tuple(s.name for s in shared)
    out: list[Segment] = []
    tokens = blocks = 0
    for i, s in enumerate(shared):
        tokens += s.tokens
        b = tokens // block_size
        out.append((("shared", names[: i + 1]), b - blocks))
        blocks = b
    calls = [*history, extra] if extra is not None else list(history)
    for j, (new_in, gen) in enumerate(calls):
        tokens += new_in + gen
        b = tokens // block_size
        out.append((("conv", names, session, j), b - blocks))
        blocks = b
    return out, tokens


def lane_work_tokens(lane: Any) -> float:
    """Tokens a lane still has to compute for the sequences it holds (kv.routing's unit of work): the
    uncomputed prompt of those waiting or prefilling, and on a lane that decodes (not a prefill pool's)
    the output left to decode of all of them."""
    queued = (*lane.waiting, *lane.prefilling)
    running = getattr(lane, "running", None)
    if running is None:  # a prefill pool's lane: the prompts only
        return float(sum(s.need - s.done for s in queued))
    work = sum(s.need - s.done + s.osl - s.out for s in queued)
    return float(work + sum(max(seq.end_step - lane.steps, 0) for _, _, seq, gen in running
                            if seq.gen == gen and seq.state == 2))


@dataclass
class Lookup:
    """Where a call goes and what it finds there."""

    lane: int
    cached_tokens: int
    transfer_s: float
    match: Match | None


@dataclass
class PoolKv:
    """The KV residency of one LLM pool's lanes, and the router that uses it."""

    lanes: Sequence[Any]  # schedulers.Lane or the prefill lanes of pools.LlmPool
    block_size: int
    device_blocks: int
    kv_bytes_per_token: float  # on all of a replica's devices (cost.kv_reuse_pricing.replica_kv_bytes)
    host_blocks: int = 0
    disk_blocks: int = 0
    host: TierLink | None = None  # the read-back paths (cost/kv_tiers.py); needed where the tier is enabled
    disk: TierLink | None = None
    affinity_slack_tokens: float = AFFINITY_SLACK_TOKENS  # kv.routing: work a holding replica may carry over
    cache_aware: bool = True  # False: least loaded, the cache still kept (for comparison)
    devices: int = 1  # per replica: each reads its own shard back over its own link
    residency: list[Residency] = field(init=False)
    router: Router = field(init=False)
    calls_per_lane: list[int] = field(init=False)
    _chain: Sequence[Segment] = field(init=False, default=())

    def __post_init__(self) -> None:
        if (self.host_blocks and self.host is None) or (self.disk_blocks and self.disk is None):
            raise ValueError("an enabled host or disk KV tier needs its read-back link (cost.kv_tiers.tier_link)")
        tiers = [TierSpec("device", self.device_blocks), TierSpec("host", self.host_blocks),
                 TierSpec("disk", self.disk_blocks)]
        self.residency = [Residency(tiers) for _ in self.lanes]
        affinity = (prefix_affinity(self.residency, lambda _key: self._chain, block_tokens=self.block_size)
                    if self.cache_aware else None)
        self.router = Router(affinity, self.affinity_slack_tokens)
        self.calls_per_lane = [0] * len(self.lanes)

    def loads(self) -> list[ReplicaLoad]:
        out = []
        for i, lane in enumerate(self.lanes):
            n = lane.in_system() if hasattr(lane, "in_system") else len(lane.waiting) + len(lane.prefilling)
            out.append(ReplicaLoad(i, n, work_tokens=lane_work_tokens(lane)))
        return out

    def route(self, chain: Sequence[Segment], prefix_tokens: int, isl: int, now: float, reuse: bool) -> Lookup:
        """Pick the lane for a call (shares are the simulator's `Router` above this pool; here affinity, then
        least loaded) and look its prefix up there."""
        self._chain = chain
        lane = self.router.pick_replica(self.loads(), key="call" if reuse else None)
        assert lane is not None  # simulated lanes are always healthy
        self.calls_per_lane[lane] += 1
        if not reuse or not chain:
            return Lookup(lane, 0, 0.0, None)
        self._fit(lane, now)
        m = self.residency[lane].lookup(chain, now)
        cached = min(m.hit_blocks * self.block_size, prefix_tokens, max(isl - 1, 0))  # the last token is computed
        transfer = 0.0
        for link, blocks in ((self.host, m.blocks[HOST]), (self.disk, m.blocks[DISK])):
            if blocks and link is not None:
                transfer += replica_read_back_s(link, blocks * self.block_size * self.kv_bytes_per_token, self.devices)
        return Lookup(lane, cached, transfer, m)

    def keep(self, lane: int, chain: Sequence[Segment], now: float, policy: str, pin: bool) -> list[Any]:
        """After a call on `lane`: keep its context as `policy` says; returns the keys pinned (release them
        with `release` before the request's next call, or when it ends)."""
        res = self.residency[lane]
        self._fit(lane, now)
        kept = res.insert(chain, now)
        keys = [k for k, _ in chain[:kept]]
        if policy in ("host", "disk"):
            tier = HOST if policy == "host" else DISK
            res.demote([k for k in keys if isinstance(k, tuple) and k[0] == "conv"], tier, now)
            return []
        if not pin:
            return []
        blocks = sum(b for _, b in chain[:kept])
        if res.pinned_blocks + blocks > MAX_PINNED_SHARE * self.device_blocks:
            return []
        pinned = res.pin(keys)
        self._set_batch_kv(lane)
        return pinned

    def release(self, lane: int, keys: Sequence[Any]) -> None:
        if keys:
            self.residency[lane].unpin(keys)
            self._set_batch_kv(lane)

    def _fit(self, lane: int, now: float) -> None:
        """The device tier holds what the lane's running batch leaves of its KV blocks (paged lanes): an
        engine's prefix cache lives in its free blocks and loses them as the batch grows."""
        blocks = getattr(self.lanes[lane], "blocks", None)
        if blocks is not None and getattr(self.lanes[lane], "paged", False):
            res = self.residency[lane]
            in_use = blocks.fixed + blocks.decode_blocks(self.lanes[lane].steps)
            res.resize(DEVICE, self.device_blocks - in_use, now)

    def _set_batch_kv(self, lane: int) -> None:
        """Blocks pinned between calls are not the running batch's (schedulers.BlockManager.pinned)."""
        blocks = getattr(self.lanes[lane], "blocks", None)
        if blocks is not None and hasattr(blocks, "pin"):
            blocks.pin(self.residency[lane].pinned_blocks)

    # report -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        hit = [0, 0, 0]
        missed = lookups = hit_lookups = evicted = 0
        for r in self.residency:
            c = r.counters
            for t in range(3):
                hit[t] += c.hit_blocks[t]
            missed += c.missed_blocks
            lookups += c.lookups
            hit_lookups += c.hit_lookups
            evicted += c.evicted_blocks[DEVICE]
        total = sum(hit) + missed
        return {"lookups": lookups, "hit_lookups": hit_lookups,
                "hit_rate": sum(hit) / total if total else 0.0,
                "hit_tokens": {TIERS[t]: hit[t] * self.block_size for t in range(3)},
                "missed_tokens": missed * self.block_size,
                "evicted_tokens": evicted * self.block_size, "calls_per_replica": list(self.calls_per_lane)}
