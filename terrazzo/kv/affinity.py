"""Cache affinity for the Router (routing.py): which replica of a pool holds the most of a call's prefix.

One `Residency` (residency.py) per replica records the prefix chains (prefix_keys.py) sent there; the
hook answers the replica with the longest resident head of the call's chain and the tokens it holds
(ties: fewer calls in flight), or None when no replica holds even the call's scope root. The Router then
takes it while its queued work, less those tokens, is within its slack of the least loaded replica's.
A chain's root is a 0-block segment, so a session's next turn keeps to its replica even before a full
block of it is cached (session affinity), and its block keys give prefix affinity. Pure, like the
Router: the caller passes `now`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from terrazzo.kv.prefix_keys import PrefixKey, decode
from terrazzo.kv.residency import Match, Residency, Segment, TierSpec
from terrazzo.kv.routing import Held, ReplicaLoad


def segments(chain: Sequence[str], max_blocks: int | None = None) -> list[Segment]:
    """Residency segments of a chain: the root holds 0 blocks, each block key 1; at most `max_blocks`."""
    body = chain[1:] if max_blocks is None else chain[1:1 + max(0, max_blocks)]
    return [(chain[0], 0), *((k, 1) for k in body)] if chain else []


@dataclass
class Placed:
    """Where one call went and what it found there."""

    replica: int
    match: Match
    inserted_blocks: int          # blocks of the chain resident on the replica after the call


class CacheAffinity:
    """Per replica, the KV chains it holds (LRU within `capacity_blocks`); the Router's `Affinity` hook."""

    def __init__(self, replicas: int, capacity_blocks: int, block_tokens: int = 1) -> None:
        if replicas < 1 or capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("cache affinity needs ≥ 1 replica, ≥ 1 block of KV capacity and ≥ 1 token a block")
        self.capacity_blocks, self.block_tokens = capacity_blocks, block_tokens
        self.replicas = [Residency([TierSpec("device", capacity_blocks)]) for _ in range(replicas)]

    def reset(self, replica: int) -> None:
        """The replica lost its cache (a crash or restart): it holds nothing any more."""
        self.replicas[replica] = Residency([TierSpec("device", self.capacity_blocks)])

    def depth(self, chain: Sequence[str], replica: int) -> int:
        """Leading keys of `chain` (root included) resident on `replica`, without touching them."""
        res = self.replicas[replica]
        n = 0
        for key in chain:
            if res.resident(key) is None:
                break
            n += 1
        return n

    def __call__(self, key: str, loads: Sequence[ReplicaLoad]) -> Held | None:
        chain = decode(key)
        best = max(loads, key=lambda r: (self.depth(chain, r.replica), -r.in_flight, -r.replica), default=None)
        depth = self.depth(chain, best.replica) if best is not None else 0
        if best is None or depth == 0:
            return None
        return Held(best.replica, (depth - 1) * self.block_tokens)  # the root holds no tokens

    def place(self, key: PrefixKey, replica: int, now: float, max_blocks: int | None = None) -> Placed:
        """Count the call's hit on `replica` and make its chain (up to `max_blocks`) resident there."""
        res = self.replicas[replica]
        chain = key.chain()
        match = res.lookup(segments(chain), now)
        kept = res.insert(segments(chain, max_blocks), now)
        return Placed(replica, match, max(0, kept - 1))

    def forget(self, chain: Sequence[str]) -> int:
        """Drop a scope's keys on every replica (a session that expired); returns blocks dropped."""
        dropped = 0
        for res in self.replicas:
            for key in reversed(chain):  # tail first: a chain never keeps a tail without its head
                e = res.entries.get(key)
                if e is not None and res.drop(key):
                    dropped += e.blocks
        return dropped

    def held_blocks(self, chain: Sequence[str]) -> int:
        """Blocks of `chain` resident on any replica."""
        return max(0, max(self.depth(chain, i) for i in range(len(self.replicas))) - 1)

    @property
    def used_blocks(self) -> int:
        return sum(r.used[0] for r in self.replicas)
