"""Which KV prefixes one replica holds, and where: the cache manager's state (paper §4.1), shared by the
runtime's cache-aware router and the simulator. Pure: no I/O and no clock; the caller passes `now`.

A prefix is a chain of segments, each a hashable key and its size in KV blocks. A key names its whole
chain up to itself (the caller hashes the chain in, as vLLM's block hashes do, and scopes it to the
tenant: `kv/prefix_keys.py`), so the same key always means the same tokens. The runtime uses one block
per key; the simulator one key per segment (a system prompt, a conversation up to one call).

- `lookup(chain, now)`: the longest resident prefix of the chain, with how many of its blocks sit in each
  tier; the hit is touched and a hit in a lower tier is brought back to the device (the caller prices
  the transfer). Counters: hit blocks per tier, missed blocks, lookups.
- `insert(chain, now)`: make the chain resident on the device (touching what already is).
- `pin(keys)` / `unpin(keys)`: an agent loop in flight pins its prefix until its last iteration; a pinned
  entry is never evicted nor demoted (counted: one loop may pin what another already pinned).
- Eviction: least recently used first; among entries used at the same moment, the deepest of a chain
  first (its tail), so a chain shrinks from its end and never leaves an unreachable tail behind (the
  order vLLM's prefix cache frees blocks in). An entry evicted from one tier moves to the next enabled
  one (device → host → disk), where it may evict in turn; from the last it is dropped. `demote` moves
  entries down on purpose (a plan's `host`/`disk` policy offloads a prefix during a tool call); `resize`
  changes a tier's capacity (on a replica the device tier is what the running batch leaves free).
- `prefix_affinity(replicas, chain_of)`: the `kv.routing.Affinity` built on residency: the replica
  holding the longest head of the call's chain.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush

from terrazzo.kv.routing import Affinity, Held, ReplicaLoad

TIERS = ("device", "host", "disk")
DEVICE, HOST, DISK = 0, 1, 2

Segment = tuple[Hashable, int]  # (key, blocks)


@dataclass(frozen=True)
class TierSpec:
    """One tier's capacity in KV blocks; 0 disables it (nothing is demoted into it)."""

    name: str
    capacity_blocks: int

    def __post_init__(self) -> None:
        if self.name not in TIERS:
            raise ValueError(f"unknown KV tier {self.name!r}; use one of {', '.join(TIERS)}")
        if self.capacity_blocks < 0:
            raise ValueError(f"tier {self.name} capacity must be ≥ 0 blocks, got {self.capacity_blocks}")


@dataclass(frozen=True)
class Match:
    """The longest resident prefix of a looked-up chain."""

    segments: int                      # leading segments of the chain found resident
    blocks: tuple[int, int, int]       # of them, blocks found in the device, host and disk tiers
    missed_blocks: int                 # blocks of the chain after the match

    @property
    def hit_blocks(self) -> int:
        return sum(self.blocks)


@dataclass
class Counters:
    lookups: int = 0
    hit_lookups: int = 0               # lookups that matched at least one segment
    hit_blocks: list[int] = field(default_factory=lambda: [0, 0, 0])  # per tier
    missed_blocks: int = 0
    evicted_blocks: list[int] = field(default_factory=lambda: [0, 0, 0])  # left each tier on eviction
    dropped_blocks: int = 0            # evicted from the last enabled tier: gone
    refused_blocks: int = 0            # could not be inserted: the device was full of pinned entries

    @property
    def hit_rate(self) -> float:
        """Blocks found ÷ blocks looked up (vLLM's prefix-cache hit rate is the same ratio in tokens)."""
        total = sum(self.hit_blocks) + self.missed_blocks
        return sum(self.hit_blocks) / total if total else 0.0


class _Entry:
    __slots__ = ("blocks", "depth", "key", "last_s", "pins", "tier", "version")

    def __init__(self, key: Hashable, blocks: int, depth: int, now: float) -> None:
        self.key, self.blocks, self.depth, self.last_s = key, blocks, depth, now
        self.tier = DEVICE
        self.pins = 0
        self.version = 0  # bumped on every touch, pin, move: stale heap items are skipped


class Residency:
    """The KV one replica holds, by tier. `tiers`: device first; host and disk optional."""

    def __init__(self, tiers: Sequence[TierSpec]) -> None:
        caps = {t.name: t.capacity_blocks for t in tiers}
        if "device" not in caps:
            raise ValueError("a replica's KV residency needs a device tier")
        self.capacity = [caps.get(name, 0) for name in TIERS]
        self.used = [0, 0, 0]
        self.pinned_blocks = 0
        self.entries: dict[Hashable, _Entry] = {}
        self.counters = Counters()
        self._heaps: list[list[tuple[float, int, int, int, Hashable]]] = [[], [], []]
        self._seq = 0

    # queries ------------------------------------------------------------------------------------

    def resident(self, key: Hashable) -> str | None:
        """The tier holding `key`, or None."""
        e = self.entries.get(key)
        return TIERS[e.tier] if e is not None else None

    def match_depth(self, chain: Sequence[Segment]) -> int:
        """Resident blocks at the head of `chain`, without touching or counting: for a router's affinity."""
        blocks = 0
        for key, _ in chain:
            e = self.entries.get(key)
            if e is None:
                break
            blocks += e.blocks
        return blocks

    def lookup(self, chain: Sequence[Segment], now: float) -> Match:
        """The longest resident prefix of `chain`; touch it, bring it to the device, count it."""
        per_tier = [0, 0, 0]
        found: list[_Entry] = []
        for key, _ in chain:
            e = self.entries.get(key)
            if e is None:
                break
            per_tier[e.tier] += e.blocks
            found.append(e)
        missed = sum(b for _, b in chain[len(found):])
        c = self.counters
        c.lookups += 1
        c.hit_lookups += bool(found)
        for t in range(3):
            c.hit_blocks[t] += per_tier[t]
        c.missed_blocks += missed
        held: list[_Entry] = []
        for e in found:  # the head stays held while the tail comes back, so it cannot push the head out
            if self.entries.get(e.key) is not e:
                break  # dropped by an earlier segment's return: the chain is cut here
            if e.tier != DEVICE:
                tier = e.tier
                self._remove(e)
                if not self._place(e, DEVICE, now):
                    self._place(e, tier, now)  # the device is full of pinned entries: it stays below
                    break
            self._touch(e, now)
            self._hold(e)
            held.append(e)
        for e in held:
            self._release(e)
        return Match(len(found), (per_tier[0], per_tier[1], per_tier[2]), missed)

    # updates ------------------------------------------------------------------------------------

    def insert(self, chain: Sequence[Segment], now: float) -> int:
        """Make `chain` resident on the device; returns how many leading segments are resident after
        (fewer than the chain when the device is full of pinned entries, or the chain exceeds it)."""
        held: list[_Entry] = []
        try:
            for depth, (key, blocks) in enumerate(chain):
                if blocks < 0:
                    raise ValueError(f"a KV segment has at least 0 blocks, got {blocks} for {key!r}")
                e = self.entries.get(key)
                if e is None:
                    e = _Entry(key, blocks, depth, now)
                    if not self._place(e, DEVICE, now):
                        self.counters.refused_blocks += sum(b for _, b in chain[depth:])
                        return depth
                    self.entries[key] = e
                elif e.tier != DEVICE:
                    tier = e.tier
                    self._remove(e)
                    if not self._place(e, DEVICE, now):
                        self._place(e, tier, now)
                        self.counters.refused_blocks += sum(b for _, b in chain[depth:])
                        return depth
                self._touch(e, now)
                self._hold(e)  # the chain's head is not evicted for its own tail
                held.append(e)
            return len(chain)
        finally:
            for e in held:
                self._release(e)

    def pin(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """Pin the resident ones of `keys` (on the device only); returns those pinned."""
        done = []
        for key in keys:
            e = self.entries.get(key)
            if e is not None and e.tier == DEVICE:
                self._hold(e)
                done.append(key)
        return done

    def unpin(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            e = self.entries.get(key)
            if e is not None and e.pins:
                self._release(e)

    def demote(self, keys: Iterable[Hashable], tier: int, now: float) -> int:
        """Offload the unpinned device entries among `keys` to `tier` (HOST or DISK), as a plan's `host` or
        `disk` KV policy does during a tool call; returns the blocks moved (an entry that does not fit
        there is dropped)."""
        if not DEVICE < tier < len(TIERS):
            raise ValueError(f"demote to host ({HOST}) or disk ({DISK}), not tier {tier}")
        moved = 0
        for key in keys:
            e = self.entries.get(key)
            if e is None or e.tier != DEVICE or e.pins:
                continue
            self._remove(e)
            if self.capacity[tier] > 0 and self._place(e, tier, now):
                moved += e.blocks
            else:
                del self.entries[key]
                self.counters.dropped_blocks += e.blocks
        return moved

    def resize(self, tier: int, capacity_blocks: int, now: float) -> None:
        """Set a tier's capacity (the device's shrinks while the running batch holds blocks), evicting its
        least recently used unpinned entries down to it; pinned entries stay even past it."""
        self.capacity[tier] = max(0, capacity_blocks)
        while self.used[tier] > self.capacity[tier]:
            victim = self._victim(tier)
            if victim is None:
                return
            self._evict(victim, now)

    def drop(self, key: Hashable) -> bool:
        """Forget `key` (a session that ended, a TTL that ran out); a pinned entry stays."""
        e = self.entries.get(key)
        if e is None or e.pins:
            return False
        self._remove(e)
        del self.entries[key]
        return True

    # internals ----------------------------------------------------------------------------------

    def _hold(self, e: _Entry) -> None:
        if e.pins == 0:
            self.pinned_blocks += e.blocks
            e.version += 1  # out of the eviction heap
        e.pins += 1

    def _release(self, e: _Entry) -> None:
        e.pins -= 1
        if e.pins == 0:
            self.pinned_blocks -= e.blocks
            self._push(e)

    def _touch(self, e: _Entry, now: float) -> None:
        e.last_s = max(e.last_s, now)
        if e.pins == 0:
            self._push(e)

    def _push(self, e: _Entry) -> None:
        e.version += 1
        self._seq += 1
        heap = self._heaps[e.tier]
        heappush(heap, (e.last_s, -e.depth, self._seq, e.version, e.key))
        if len(heap) > 4 * len(self.entries) + 64:  # stale versions pile up while the tier has room
            self._compact(e.tier)

    def _compact(self, tier: int) -> None:
        """Rebuild a tier's eviction heap from its live unpinned entries (a long-lived server's touches)."""
        live = [(x.last_s, -x.depth, x.version, x.key) for x in self.entries.values() if x.tier == tier and x.pins == 0]
        heap = []
        for last_s, depth, version, key in live:
            self._seq += 1
            heap.append((last_s, depth, self._seq, version, key))
        heapify(heap)
        self._heaps[tier] = heap

    def _remove(self, e: _Entry) -> None:
        self.used[e.tier] -= e.blocks
        e.version += 1

    def _place(self, e: _Entry, tier: int, now: float) -> bool:
        """Put `e` (unplaced) in `tier`, evicting that tier's least recently used unpinned entries."""
        if e.blocks > self.capacity[tier]:
            return False
        while self.used[tier] + e.blocks > self.capacity[tier]:
            victim = self._victim(tier)
            if victim is None:
                return False
            self._evict(victim, now)
        e.tier = tier
        self.used[tier] += e.blocks
        self._push(e)
        return True

    def _victim(self, tier: int) -> _Entry | None:
        heap = self._heaps[tier]
        while heap:
            _, _, _, version, key = heappop(heap)
            e = self.entries.get(key)
            if e is not None and e.version == version and e.tier == tier and e.pins == 0:
                return e
        return None

    def _evict(self, e: _Entry, now: float) -> None:
        """Move `e` down to the next enabled tier, or drop it."""
        tier = e.tier
        self._remove(e)
        self.counters.evicted_blocks[tier] += e.blocks
        for lower in range(tier + 1, 3):
            if self.capacity[lower] > 0:
                if self._place(e, lower, now):
                    return
                break
        del self.entries[e.key]
        self.counters.dropped_blocks += e.blocks


def prefix_affinity(replicas: Sequence[Residency], chain_of: Callable[[str], Sequence[Segment]],
                    min_blocks: int = 1, block_tokens: int = 1) -> Affinity:
    """A `kv.routing.Affinity`: the replica (index into `replicas`) holding the most blocks at the head of
    the call's chain (`chain_of(key)`), in any tier, and their tokens (`block_tokens` a block); ties go to
    the less loaded, then the lower index. None when no replica holds `min_blocks`: the router then takes
    the least loaded."""

    def pick(key: str, loads: Sequence[ReplicaLoad]) -> Held | None:
        chain = chain_of(key)
        best: tuple[int, int, int] | None = None
        for r in loads:
            depth = replicas[r.replica].match_depth(chain)
            if depth >= min_blocks and (best is None or (-depth, r.in_flight, r.replica) < best):
                best = (-depth, r.in_flight, r.replica)
        return Held(best[2], -best[0] * block_tokens) if best is not None else None

    return pick
