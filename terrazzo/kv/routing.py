"""The router: which pool, then which replica, serves one op. A pure policy (no I/O, no clock, no
randomness), so the runtime and the simulator make the same choice from the same state:

1. the planner's shares, when it split an op across pools: the pool furthest below its share of the
   op's traffic so far takes the next call (deficit round robin: exact shares over any window);
2. cache affinity: a hook (`Affinity`) may name the replica that already holds the call's context and
   how many of its tokens it holds (KV cache: kv/affinity.py in the runtime, kv/residency.py in the
   simulator); it is taken while its queued work, less the tokens the hit saves, is within
   `affinity_slack_tokens` of the least loaded replica's: the call goes where its own prefill would
   start and finish soonest, counted in tokens, so a warm hit is not traded for a cold prefill on an
   idle replica, nor kept behind another call's cold prefill it would wait out;
3. least loaded: the healthy replica with the least queued work (then the fewest calls in flight, then
   the lowest index).

Work is counted in tokens still to compute for the calls a replica holds: their uncached prompt tokens
and their output tokens to decode. A token is one pass over the weights in prefill and decode alike,
which makes it a unit both the runtime (which knows a call's prompt, hit and `max_tokens`) and the
simulator (which knows every sequence's progress) can count without a cost model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

AFFINITY_SLACK_TOKENS = 0.0  # beyond the tokens a hit saves: the call goes where its prefill ends soonest


@dataclass(frozen=True)
class PoolShare:
    pool: str
    share: float                 # fraction of the op's calls the plan gives this pool (sums to 1 per op)


@dataclass(frozen=True)
class ReplicaLoad:
    replica: int
    in_flight: int               # calls sent and not yet answered
    healthy: bool = True         # ready and not restarting
    work_tokens: float = 0.0     # tokens still to compute for those calls: uncached prompt + output to decode


@dataclass(frozen=True)
class Held:
    """The replica holding a call's context, and how many of the call's prompt tokens it holds."""

    replica: int
    cached_tokens: float = 0.0


# (affinity key of the call, replica loads) -> the replica holding its context, or None
Affinity = Callable[[str, Sequence[ReplicaLoad]], Held | None]


@dataclass(frozen=True)
class Router:
    affinity: Affinity | None = None
    affinity_slack_tokens: float = AFFINITY_SLACK_TOKENS

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
        least = min(ok, key=lambda r: (r.work_tokens, r.in_flight, r.replica))
        if self.affinity is not None and key is not None:
            want = self.affinity(key, ok)
            held = next((r for r in ok if want is not None and r.replica == want.replica), None)
            if held is not None and want is not None and self.keeps(held, least, want.cached_tokens):
                return held.replica
        return least.replica

    def keeps(self, held: ReplicaLoad, least: ReplicaLoad, cached_tokens: float) -> bool:
        """Whether the replica holding `cached_tokens` of the call stays its choice over the least loaded:
        its queued work plus the call's uncached prompt is within the slack of the least loaded's work
        plus the whole prompt (the output's decode is the same on either)."""
        return held.work_tokens - cached_tokens <= least.work_tokens + self.affinity_slack_tokens
