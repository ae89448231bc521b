"""Sessions the KV cache manager keeps across requests: a TTL and a per-session memory budget.

A session (tenant, session id) is live from its first call until `ttl_s` after its last one; then its
KV is let go (the affinity forgets its chain, so nothing routes to it any more, and the engine's LRU
reclaims the blocks). A session holds at most `budget_bytes` of KV: a call whose chain is longer keeps
only the head that fits (the rest is counted as evicted for the budget). Calls without a session have
their request as scope, kept the same way (kind "request"), so an agent loop's iterations reuse too.
Pure: the caller passes `now`."""

from __future__ import annotations

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
    replica: int | None = None
    pool: str = ""
    held_bytes: int = 0
    calls: int = 0
    last_s: float = 0.0


@dataclass
class SessionCounters:
    expired: int = 0                   # sessions let go after their TTL
    evicted_bytes: int = 0             # KV let go: expired sessions' and what exceeded a budget
    over_budget_calls: int = 0         # calls whose prefix was longer than the session's budget


@dataclass
class Sessions:
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    live: dict[tuple[str, str], Session] = field(default_factory=dict)
    counters: SessionCounters = field(default_factory=SessionCounters)

    def touch(self, tenant: str, scope: str, kind: str, now: float) -> Session:
        s = self.live.get((tenant, scope))
        if s is None:
            s = self.live[(tenant, scope)] = Session(tenant, scope, kind, last_s=now)
        s.last_s, s.calls = max(s.last_s, now), s.calls + 1
        return s

    def hold(self, s: Session, chain: tuple[str, ...], replica: int, pool: str, held_bytes: int,
             over_bytes: int) -> None:
        """After a call: the session's chain, where it lives, the bytes kept and those over the budget."""
        s.chain, s.replica, s.pool, s.held_bytes = chain, replica, pool, held_bytes
        if over_bytes > 0:
            self.counters.over_budget_calls += 1
            self.counters.evicted_bytes += over_bytes

    def expire(self, now: float) -> list[Session]:
        """Sessions idle for longer than the TTL: removed and returned (the caller frees their KV)."""
        gone = [s for s in self.live.values() if now - s.last_s > self.policy.ttl_s]
        for s in gone:
            del self.live[(s.tenant, s.scope)]
            self.counters.expired += 1
            self.counters.evicted_bytes += s.held_bytes
        return gone

    def bytes_held(self, kind: str | None = None) -> int:
        return sum(s.held_bytes for s in self.live.values() if kind is None or s.kind == kind)

    def count(self, kind: str | None = None) -> int:
        return sum(1 for s in self.live.values() if kind is None or s.kind == kind)
