"""Sessions the KV cache manager keeps across requests: a TTL and a per-session memory budget.

A session (tenant, session id) is live from its first call until `ttl_s` after its last one; then its
KV is let go (the affinity forgets its chains, so nothing routes to them any more, and the engine's LRU
reclaims the blocks). A session holds at most `budget_bytes` of KV over all the chains its calls made
(a chat's turns extend one chain; an agent's different prompts make several): a call whose chain is
longer keeps only the head that fits, and older chains go, oldest first, until the union fits. Calls
without a session have their request as scope, kept the same way (kind "request"), so an agent loop's
iterations reuse too. Sessions are kept in last-use order, so expiry looks only at the sessions it lets
go (the caller's clock is monotonic). Pure: the caller passes `now`."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

_MIB = 1 << 20


@dataclass(frozen=True)
class SessionPolicy:
    ttl_s: float = 600.0
    budget_bytes: int = 256 * _MIB

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"session TTL must be > 0 s, got {self.ttl_s}")
        if self.budget_bytes < 1:
            raise ValueError(f"session KV budget must be ≥ 1 byte, got {self.budget_bytes}")

    def budget_blocks(self, bytes_per_block: int) -> int:
        return self.budget_bytes // max(1, bytes_per_block)


@dataclass
class Session:
    tenant: str
    scope: str
    kind: str                          # "session" (a client's session id) or "request" (no session)
    chain: tuple[str, ...] = ()        # the latest call's prefix chain (root first)
    chains: list[tuple[str, ...]] = field(default_factory=list)  # every chain it holds, oldest first
    replica: int | None = None
    pool: str = ""
    held_bytes: int = 0
    calls: int = 0
    last_s: float = 0.0


@dataclass
class SessionCounters:
    expired: int = 0                   # sessions let go after their TTL
    evicted_bytes: int = 0             # KV let go: over a session's budget, or its TTL (not what LRU took)
    over_budget_calls: int = 0         # calls whose prefix was longer than the session's budget


@dataclass
class Sessions:
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    live: OrderedDict[tuple[str, str], Session] = field(default_factory=OrderedDict)  # least recently used first
    counters: SessionCounters = field(default_factory=SessionCounters)

    def touch(self, tenant: str, scope: str, kind: str, now: float) -> Session:
        s = self.live.get((tenant, scope))
        if s is None:
            s = self.live[(tenant, scope)] = Session(tenant, scope, kind, last_s=now)
        else:
            self.live.move_to_end((tenant, scope))
        s.last_s, s.calls = max(s.last_s, now), s.calls + 1
        return s

    def hold(self, s: Session, chain: tuple[str, ...], replica: int, pool: str) -> None:
        """After a call: the session's latest chain (the part kept) and where it lives. A chain that
        extends one the session holds replaces it; a chain inside one it holds adds nothing."""
        s.chain, s.replica, s.pool = chain, replica, pool
        if any(old[:len(chain)] == chain for old in s.chains):
            return
        s.chains = [old for old in s.chains if chain[:len(old)] != old] + [chain]

    def over_budget(self, s: Session, budget_blocks: int) -> list[str]:
        """Keys to let go so the session's chains fit `budget_blocks`: whole older chains, oldest first,
        each tail first (a chain never keeps a tail without its head); keys the latest chain shares stay."""
        drop: list[str] = []
        while len(s.chains) > 1 and len(_blocks(s.chains)) > budget_blocks:
            old = s.chains.pop(0)
            keep = _blocks(s.chains)
            drop += [k for k in reversed(old[1:]) if k not in keep]
        return drop

    def evicted(self, evicted_bytes: int) -> None:
        """One call went over its session's budget and let `evicted_bytes` go."""
        if evicted_bytes > 0:
            self.counters.over_budget_calls += 1
            self.counters.evicted_bytes += evicted_bytes

    def expire(self, now: float) -> list[Session]:
        """Sessions idle for longer than the TTL: removed and returned, oldest first (the caller frees
        their KV and counts what that really let go: blocks the engine's LRU took already are gone)."""
        gone: list[Session] = []
        while self.live:
            s = next(iter(self.live.values()))
            if now - s.last_s <= self.policy.ttl_s:
                break
            del self.live[(s.tenant, s.scope)]
            self.counters.expired += 1
            gone.append(s)
        return gone

    def keys(self, s: Session) -> set[str]:
        """Every block key the session's chains hold (roots hold no block)."""
        return _blocks(s.chains)

    def bytes_held(self, kind: str | None = None) -> int:
        return sum(s.held_bytes for s in self.live.values() if kind is None or s.kind == kind)

    def count(self, kind: str | None = None) -> int:
        return sum(1 for s in self.live.values() if kind is None or s.kind == kind)


def _blocks(chains: list[tuple[str, ...]]) -> set[str]:
    return {k for c in chains for k in c[1:]}
