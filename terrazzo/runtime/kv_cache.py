"""The runtime's KV cache manager for vLLM pools: the prefix key of each call, cache-aware replica
choice, sessions with TTL and budget, and their Prometheus series (shown in the server's /metrics).

The KV itself lives in vLLM (automatic prefix caching, on unless the run config turns it off); this
manager decides *where* a call goes so that its prefix is found, and keeps the books: per replica the
chains sent there (kv/affinity.py on kv/residency.py, sized like the replica's KV cache), per session
what it holds. With `kv.isolate`, each call carries vLLM's `cache_salt` for its (tenant, scope), so the
engine itself never reuses one session's or tenant's KV for another's request.

The books are touched from the event loop (calls) and from the metrics scrape (another thread, which also
lets expired sessions go, so the gauges fall without a call arriving): one lock per pool. Prompts are
tokenised on one worker thread per pool (`akey`), off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from terrazzo.kv.affinity import CacheAffinity, Placed
from terrazzo.kv.prefix_keys import PrefixKey, prefix_key
from terrazzo.kv.routing import ReplicaLoad, Router
from terrazzo.kv.sessions import SessionPolicy, Sessions
from terrazzo.runtime.config import KvSettings
from terrazzo.runtime.engines.vllm_server import kv_bytes_per_token

_GIB, _MIB = 1 << 30, 1 << 20
REQUEST_SCOPE = "once:"   # the orchestrator's scope for a request without a session


@dataclass
class KvCounts:
    calls: int = 0
    hit_calls: int = 0             # calls that found at least one block of their prefix on their replica
    hit_blocks: int = 0
    missed_blocks: int = 0
    to_affinity: int = 0           # calls sent to the replica holding their prefix
    affinity_overruled: int = 0    # calls whose prefix replica had too much work queued (the Router's slack)


class PoolKv:
    """One engine pool's cache manager."""

    def __init__(self, pool: str, replicas: int, checkpoint: str, kv_cache_gib: float, settings: KvSettings,
                 secret: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool, self.settings, self._secret, self.clock = pool, settings, secret, clock
        per_token = kv_bytes_per_token(checkpoint)
        self.bytes_per_block = (per_token or 0) * settings.block_tokens
        capacity = int(kv_cache_gib * _GIB // self.bytes_per_block) if self.bytes_per_block else 1 << 20
        self.affinity = CacheAffinity(replicas, max(1, capacity), settings.block_tokens)
        self.router = Router(self.affinity if settings.affinity else None, settings.affinity_slack_tokens)
        self.sessions = Sessions(SessionPolicy(settings.session_ttl_s, int(settings.session_budget_mib * _MIB)))
        self.counts = KvCounts()
        self._tokenizer: Any = None
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix=f"tz-kv-tokens-{pool}")

    def _tokens(self, prompt: str) -> Sequence[int] | str:
        """The prompt's token ids with the pool's tokenizer (text bytes when there is none)."""
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self._checkpoint, local_files_only=True)
            except (OSError, ValueError, ImportError):
                self._tokenizer = False
        if self._tokenizer is False:
            return prompt
        return self._tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def key(self, tenant: str, scope: str, prompt: str) -> PrefixKey:
        return prefix_key(tenant, scope, self._tokens(prompt), block_tokens=self.settings.block_tokens,
                          block_bytes=4 * self.settings.block_tokens)  # text: ~4 bytes a token

    async def akey(self, tenant: str, scope: str, prompt: str) -> PrefixKey:
        """`key`, tokenising on the pool's own thread: a long prompt does not hold up the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, self.key, tenant, scope, prompt)

    def request_extra(self, key: PrefixKey) -> dict[str, Any]:
        """Fields the call adds to its completion request: the scope's cache salt."""
        return {"cache_salt": key.cache_salt(self._secret)} if self.settings.isolate else {}

    def placed(self, key: PrefixKey, loads: Sequence[ReplicaLoad], replica: int, now: float | None = None) -> Placed:
        """Book a call the Router sent to `replica`: its hit, its chain (within the session's budget),
        the session's bytes; expire sessions past their TTL."""
        now = self.clock() if now is None else now
        with self._lock:
            self._expire(now)
            return self._placed(key, loads, replica, now)

    def _placed(self, key: PrefixKey, loads: Sequence[ReplicaLoad], replica: int, now: float) -> Placed:
        c = self.counts
        c.calls += 1
        want = self.affinity(key.encode(), [r for r in loads if r.healthy]) if self.settings.affinity else None
        if want is not None:
            c.to_affinity += want.replica == replica
            c.affinity_overruled += want.replica != replica
        kind = "request" if key.scope.startswith(REQUEST_SCOPE) else "session"
        session = self.sessions.touch(key.tenant, key.scope, kind, now)
        budget = self.sessions.policy.budget_blocks(self.bytes_per_block) if self.bytes_per_block else None
        placed = self.affinity.place(key, replica, now, max_blocks=budget)
        c.hit_calls += placed.match.hit_blocks > 0
        c.hit_blocks += placed.match.hit_blocks
        c.missed_blocks += placed.match.missed_blocks
        self.sessions.hold(session, key.chain()[:placed.inserted_blocks + 1], replica, self.pool)
        if budget is not None:
            over_blocks = max(0, len(key.blocks) - budget)            # the call's own tail past the budget
            older = self.sessions.over_budget(session, budget)     # the session's older chains, oldest first
            dropped = self.affinity.forget(older[::-1]) if older else 0
            self.sessions.evicted((over_blocks + dropped) * self.bytes_per_block)
        session.held_bytes = self._resident_blocks(self.sessions.keys(session)) * self.bytes_per_block
        return placed

    def _resident_blocks(self, keys: set[str]) -> int:
        return sum(1 for k in keys if any(r.resident(k) is not None for r in self.affinity.replicas))

    def replica_lost(self, replica: int) -> None:
        with self._lock:
            self.affinity.reset(replica)

    def expire(self, now: float) -> None:
        with self._lock:
            self._expire(now)

    def _expire(self, now: float) -> None:
        """Let go of sessions past their TTL; count the blocks that were still held (LRU took the rest)."""
        for s in self.sessions.expire(now):
            dropped = sum(self.affinity.forget(chain) for chain in s.chains)
            self.sessions.counters.evicted_bytes += dropped * self.bytes_per_block

    @property
    def hit_rate(self) -> float:
        total = self.counts.hit_blocks + self.counts.missed_blocks
        return self.counts.hit_blocks / total if total else 0.0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats()

    def scrape(self) -> dict[str, Any]:
        """The metrics' view: sessions past their TTL let go first, then `stats` with bytes per kind."""
        with self._lock:
            self._expire(self.clock())
            return {**self._stats(), "session_bytes": self.sessions.bytes_held("session"),
                    "request_bytes": self.sessions.bytes_held("request")}

    def _stats(self) -> dict[str, Any]:
        return {**vars(self.counts), "hit_rate": round(self.hit_rate, 4),
                "sessions_live": self.sessions.count("session"), "requests_live": self.sessions.count("request"),
                "bytes_held": self.sessions.bytes_held(), "sessions_expired": self.sessions.counters.expired,
                "evicted_bytes": self.sessions.counters.evicted_bytes + self._lru_evicted_bytes()}

    def _lru_evicted_bytes(self) -> int:
        return sum(r.counters.dropped_blocks for r in self.affinity.replicas) * self.bytes_per_block


class KvManager:
    """The cache managers of a runtime's engine pools, and their metrics (a Prometheus collector)."""

    def __init__(self, settings: KvSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.clock = settings, clock
        self.pools: dict[str, PoolKv] = {}
        self._secret = os.urandom(32)   # per runtime: cache salts nobody outside can compute

    def pool(self, name: str, replicas: int, checkpoint: str, kv_cache_gib: float) -> PoolKv:
        self.pools[name] = PoolKv(name, replicas, checkpoint, kv_cache_gib, self.settings, self._secret, self.clock)
        return self.pools[name]

    def collect(self) -> Iterable[Metric]:
        live = GaugeMetricFamily("tz_kv_sessions_live", "sessions (or session-less requests) whose KV is kept",
                                 labels=["pool", "kind"])
        held = GaugeMetricFamily("tz_kv_session_bytes", "KV bytes the live sessions hold", labels=["pool", "kind"])
        hits = CounterMetricFamily("tz_kv_prefix_blocks", "prefix blocks looked up on the chosen replica",
                                   labels=["pool", "result"])
        calls = CounterMetricFamily("tz_kv_calls", "calls by what routed them", labels=["pool", "route"])
        evicted = CounterMetricFamily("tz_kv_evicted_bytes", "KV let go: TTL expiry, session budget, LRU",
                                      labels=["pool"])
        expired = CounterMetricFamily("tz_kv_sessions_expired", "sessions let go after their TTL", labels=["pool"])
        for name, p in self.pools.items():
            st = p.scrape()
            for kind in ("session", "request"):
                live.add_metric([name, kind], st[f"{kind}s_live"])
                held.add_metric([name, kind], st[f"{kind}_bytes"])
            hits.add_metric([name, "hit"], st["hit_blocks"])
            hits.add_metric([name, "miss"], st["missed_blocks"])
            calls.add_metric([name, "affinity"], st["to_affinity"])
            calls.add_metric([name, "overloaded"], st["affinity_overruled"])
            calls.add_metric([name, "least_loaded"], st["calls"] - st["to_affinity"] - st["affinity_overruled"])
            evicted.add_metric([name], st["evicted_bytes"])
            expired.add_metric([name], st["sessions_expired"])
        yield from (live, held, hits, calls, evicted, expired)
