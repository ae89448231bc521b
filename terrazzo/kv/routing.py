"""The router: which pool, then which replica, serves one op. A pure policy (no I/O, no clock, no
randomness), so the runtime and the simulator make the same choice from the same state:

1. the planner's shares, when it split an op across pools: the pool furthest below its share of the
   op's traffic so far takes the next call (deficit round robin: exact shares over any window);
2. cache affinity: a hook (`Affinity`) may name the replica that already holds the call's context
   (KV cache: kv/affinity.py in the runtime, kv/residency.py in the simulator); it is taken unless that
   replica carries `affinity_slack` more calls than the least loaded one;
3. least loaded: the healthy replica with the fewest calls in flight (ties: the lowest index).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolShare:
    pool: str
    share: float                 # fraction of the op's calls the plan gives this pool (sums to 1 per op)


@dataclass(frozen=True)
class ReplicaLoad:
    replica: int
    in_flight: int               # calls sent and not yet answered
    healthy: bool = True         # ready and not restarting


# (affinity key of the call, replica loads) -> the replica holding its context, or None
Affinity = Callable[[str, Sequence[ReplicaLoad]], int | None]


@dataclass(frozen=True)
class Router:
    affinity: Affinity | None = None
    affinity_slack: int = 4

    @staticmethod
    def pick_pool(shares: Sequence[PoolShare], sent: Mapping[str, int]) -> str:
        """The pool whose count of calls so far lags its share the most after this call."""
        if not shares:
            raise ValueError("an op needs at least one pool")
        if len(shares) == 1:
            return shares[0].pool
        total = sum(sent.get(s.pool, 0) for s in shares) + 1
        weight = sum(s.share for s in shares) or 1.0
        return max(shares, key=lambda s: (s.share / weight * total - sent.get(s.pool, 0), -shares.index(s))).pool

    def pick_replica(self, loads: Sequence[ReplicaLoad], key: str | None = None,
                     exclude: frozenset[int] = frozenset()) -> int | None:
        """The replica for the next call; None when no healthy replica is left outside `exclude`."""
        ok = [r for r in loads if r.healthy and r.replica not in exclude]
        if not ok:
            return None
        least = min(ok, key=lambda r: (r.in_flight, r.replica))
        if self.affinity is not None and key is not None:
            want = self.affinity(key, ok)
            held = next((r for r in ok if r.replica == want), None)
            if held is not None and held.in_flight <= least.in_flight + self.affinity_slack:
                return held.replica
        return least.replica
