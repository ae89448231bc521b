"""The runtime's KV cache manager without an engine: prefix keys scoped to (tenant, session), cache-aware
replica choice with the Router's slack in tokens of queued work, sessions with TTL and budget, and their
/metrics series."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from terrazzo.errors import SpecError
from terrazzo.kv.affinity import CacheAffinity
from terrazzo.kv.prefix_keys import prefix_key
from terrazzo.kv.routing import Held, ReplicaLoad
from terrazzo.runtime.config import KvSettings, load_config
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.kv_cache import KvManager, PoolKv, kv_bytes_per_token

SYSTEM = list(range(1000, 1000 + 640))            # a shared 640-token system prompt
TURN = list(range(5000, 5000 + 130))


def loads(*in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(i, n) for i, n in enumerate(in_flight)]


def work(*tokens: float) -> list[ReplicaLoad]:
    """Replicas with one call in flight each, carrying `tokens` of queued work."""
    return [ReplicaLoad(i, 1, work_tokens=t) for i, t in enumerate(tokens)]


def test_keys_never_match_across_tenants_or_sessions() -> None:
    a = prefix_key("acme", "s1", SYSTEM)
    assert len(a.blocks) == 640 // 64 and a == prefix_key("acme", "s1", SYSTEM)  # deterministic
    others = [prefix_key("globex", "s1", SYSTEM), prefix_key("acme", "s2", SYSTEM)]
    for b in others:
        assert not set(a.chain()) & set(b.chain())
        assert a.cache_salt(b"k" * 32) != b.cache_salt(b"k" * 32)
    # (tenant, scope) pairs cannot collide by concatenation
    assert prefix_key("ac", "mes1", SYSTEM).root != prefix_key("acme", "s1", SYSTEM).root != \
        prefix_key("acm", "es1", SYSTEM).root
    # the same scope: a longer input extends the chain; a changed block changes every key after it
    longer = prefix_key("acme", "s1", SYSTEM + TURN)
    assert longer.blocks[:len(a.blocks)] == a.blocks and len(longer.blocks) > len(a.blocks)
    edited = prefix_key("acme", "s1", [0, *SYSTEM[1:]])
    assert not set(edited.blocks) & set(a.blocks)
    # text without a tokenizer: byte blocks, the same rules
    t1, t2 = prefix_key("acme", "s1", "x" * 1000), prefix_key("globex", "s1", "x" * 1000)
    assert len(t1.blocks) == 1000 // 256 and not set(t1.chain()) & set(t2.chain())
    with pytest.raises(ValueError):
        prefix_key("", "s1", SYSTEM)


def test_another_tenant_is_never_routed_by_a_prefix_it_does_not_own() -> None:
    """Tenant A's prefix sits on replica 0, which carries more calls than replica 1 (within the slack).
    A's next call goes to 0 for its KV; tenant B (and A's other session), with the very same tokens, go to
    the least loaded replica: nothing of A's is theirs to find."""
    kv = PoolKv("llm", 2, "/nonexistent", 1, KvSettings(), b"s" * 32)
    kv.bytes_per_block = 1024
    a1 = prefix_key("acme", "s1", SYSTEM)
    kv.placed(a1, loads(0, 0), 0, now=0.0)
    busy = loads(3, 1)
    a2 = prefix_key("acme", "s1", SYSTEM + TURN)
    assert kv.router.pick_replica(busy, a2.encode()) == 0
    for other in (prefix_key("globex", "s1", SYSTEM + TURN), prefix_key("acme", "s2", SYSTEM + TURN)):
        assert kv.affinity(other.encode(), busy) is None
        assert kv.router.pick_replica(busy, other.encode()) == 1
        placed = kv.placed(other, busy, 1, now=1.0)
        assert placed.match.hit_blocks == 0          # booked as a miss: nothing of A's was found
    assert kv.request_extra(a1) != kv.request_extra(prefix_key("globex", "s1", SYSTEM))


def test_affinity_yields_when_queued_work_exceeds_what_the_hit_saves_plus_the_slack() -> None:
    """The 640-token prefix on replica 2 saves 640 tokens of prefill there: the call stays while replica 2's
    queued work is at most 640 + the slack (50) tokens above the least loaded's, whatever the call counts."""
    kv = PoolKv("llm", 3, "/nonexistent", 1, KvSettings(affinity_slack_tokens=50), b"s" * 32)
    kv.bytes_per_block = 1024
    key = prefix_key("acme", "s1", SYSTEM)
    kv.placed(key, loads(0, 0, 0), 2, now=0.0)
    assert kv.affinity(key.encode(), loads(0, 0, 0)).cached_tokens == 640
    assert kv.router.pick_replica(work(100, 100, 790), key.encode()) == 2     # 690 more: kept
    assert kv.router.pick_replica(work(100, 100, 791), key.encode()) == 0     # 691 more: least loaded
    many = [ReplicaLoad(0, 0), ReplicaLoad(1, 0), ReplicaLoad(2, 9, work_tokens=40)]
    assert kv.router.pick_replica(many, key.encode()) == 2                    # nine calls, little work
    kv.placed(key, work(100, 100, 791), 0, now=1.0)
    assert kv.counts.to_affinity == 0 and kv.counts.affinity_overruled == 1
    # the prefix now lives on both 2 and 0: the deeper match wins, ties go to the less loaded
    assert kv.affinity(key.encode(), loads(0, 0, 1)).replica == 0
    off = PoolKv("llm", 3, "/nonexistent", 1, KvSettings(affinity=False), b"s" * 32)
    off.placed(key, loads(0, 0, 0), 2, now=0.0)
    assert off.router.pick_replica(work(1, 1, 0), key.encode()) == 2          # least work only
    assert off.router.pick_replica(work(0, 1, 1), key.encode()) == 0


def test_longest_prefix_wins_and_lru_bounds_each_replica() -> None:
    aff = CacheAffinity(2, capacity_blocks=12)
    short, long_ = prefix_key("t", "s", SYSTEM[:128]), prefix_key("t", "s", SYSTEM)
    aff.place(short, 0, now=0.0)
    aff.place(long_, 1, now=1.0)
    assert aff(long_.encode(), loads(0, 0)) == Held(1, 10) and aff.depth(long_.chain(), 0) == 3
    for i in range(5):  # other scopes fill replica 1 past its 12 blocks: the oldest chain goes first
        aff.place(prefix_key("t", f"other{i}", SYSTEM[:192]), 1, now=2.0 + i)
    assert aff.replicas[1].used[0] <= 12
    assert aff.depth(long_.chain(), 1) < len(long_.chain())


def test_sessions_expire_after_their_ttl_and_hold_at_most_their_budget() -> None:
    per_block = 2048
    kv = PoolKv("llm", 2, "/nonexistent", 1, KvSettings(session_ttl_s=30, session_budget_mib=6 * per_block / 2**20),
                b"s" * 32)
    kv.bytes_per_block = per_block
    turn1 = prefix_key("acme", "chat", SYSTEM[:256])
    kv.placed(turn1, loads(0, 0), 1, now=0.0)
    s = kv.sessions.live[("acme", "chat")]
    assert s.held_bytes == 4 * per_block and s.replica == 1
    turn2 = prefix_key("acme", "chat", SYSTEM)                     # 10 blocks; the budget is 6
    placed = kv.placed(turn2, loads(0, 0), 1, now=10.0)
    assert placed.match.hit_blocks == 4 and placed.inserted_blocks == 6
    assert s.held_bytes == 6 * per_block
    assert kv.sessions.counters.over_budget_calls == 1 and kv.sessions.counters.evicted_bytes == 4 * per_block
    assert kv.affinity(turn2.encode(), loads(5, 0)).replica == 1          # still live at t = 35 s (idle 25 s)
    kv.expire(35.0)
    assert kv.sessions.count("session") == 1
    kv.expire(41.0)                                                # idle 31 s > 30 s: let go
    assert kv.sessions.count() == 0 and kv.sessions.counters.expired == 1
    assert kv.affinity(turn2.encode(), loads(5, 0)) is None        # nothing routes to it any more
    assert kv.stats()["evicted_bytes"] == 10 * per_block
    once = prefix_key("acme", "once:abc", SYSTEM[:64])
    kv.placed(once, loads(0, 0), 0, now=50.0)
    assert kv.sessions.count("request") == 1 and kv.sessions.count("session") == 0


def test_metrics_show_sessions_bytes_hits_and_evictions() -> None:
    clock = [0.0]
    manager = KvManager(KvSettings(session_ttl_s=5), clock=lambda: clock[0])
    kv = manager.pool("chat", 2, "/nonexistent", 1)
    kv.bytes_per_block = 4096
    reg = CollectorRegistry()
    reg.register(manager)
    kv.placed(prefix_key("acme", "chat", SYSTEM[:128]), loads(0, 0), 0)
    clock[0] = 1.0
    kv.placed(prefix_key("acme", "chat", SYSTEM[:192]), loads(0, 0), 0)
    text = generate_latest(reg).decode()
    assert 'tz_kv_sessions_live{kind="session",pool="chat"} 1.0' in text
    assert f'tz_kv_session_bytes{{kind="session",pool="chat"}} {3 * 4096}.0' in text
    assert 'tz_kv_prefix_blocks_total{pool="chat",result="hit"} 2.0' in text
    assert 'tz_kv_prefix_blocks_total{pool="chat",result="miss"} 3.0' in text
    assert 'tz_kv_calls_total{pool="chat",route="affinity"} 1.0' in text
    clock[0] = 10.0                  # no call arrives: the scrape itself lets the idle session go
    text = generate_latest(reg).decode()
    assert 'tz_kv_sessions_live{kind="session",pool="chat"} 0.0' in text
    assert 'tz_kv_session_bytes{kind="session",pool="chat"} 0.0' in text
    assert 'tz_kv_sessions_expired_total{pool="chat"} 1.0' in text
    assert f'tz_kv_evicted_bytes_total{{pool="chat"}} {3 * 4096}.0' in text


def test_a_session_budget_bounds_all_its_chains_and_evictions_count_once() -> None:
    """An agent session with two different prompts: their union is held to the budget (the older chain
    goes, tail first), and blocks the LRU already took are not counted again when the session expires."""
    per_block = 1024
    kv = PoolKv("llm", 1, "/nonexistent", 1, KvSettings(session_ttl_s=30, session_budget_mib=8 * per_block / 2**20),
                b"s" * 32)
    kv.bytes_per_block = per_block
    first = prefix_key("acme", "agent", SYSTEM[:320])                  # 5 blocks
    second = prefix_key("acme", "agent", TURN[:64] + SYSTEM[:256])     # 5 other blocks: union 10 > 8
    kv.placed(first, loads(0), 0, now=0.0)
    kv.placed(second, loads(0), 0, now=1.0)
    s = kv.sessions.live[("acme", "agent")]
    assert s.held_bytes <= 8 * per_block and s.held_bytes == 5 * per_block
    assert kv.affinity.depth(first.chain(), 0) == 1                    # the older chain let go (root left)
    assert kv.affinity.depth(second.chain(), 0) == len(second.chain())
    assert kv.sessions.counters.over_budget_calls == 1 and kv.stats()["evicted_bytes"] == 5 * per_block
    # the LRU takes part of the session's chain (a small cache), then the session expires
    small = PoolKv("llm", 1, "/nonexistent", 1, KvSettings(session_ttl_s=30), b"s" * 32)
    small.bytes_per_block = per_block
    small.affinity = CacheAffinity(1, 6)
    small.placed(prefix_key("acme", "a", SYSTEM[:256]), loads(0), 0, now=0.0)       # 4 blocks
    small.placed(prefix_key("acme", "b", TURN[:64] + SYSTEM[:192]), loads(0), 0, now=1.0)  # 4 more: LRU drops 2
    small.expire(100.0)
    assert small.stats()["evicted_bytes"] == 8 * per_block              # each block counted once


def test_sessions_expire_in_last_use_order() -> None:
    from terrazzo.kv.sessions import SessionPolicy, Sessions

    ss = Sessions(SessionPolicy(ttl_s=10))
    for i in range(5):
        ss.touch("t", f"s{i}", "session", now=float(i))
    ss.touch("t", "s0", "session", now=8.0)                           # s0 used again: now the youngest
    gone = ss.expire(now=13.5)                                         # idle > 10 s: s1, s2, s3
    assert [s.scope for s in gone] == ["s1", "s2", "s3"]
    assert list(ss.live) == [("t", "s4"), ("t", "s0")]


def test_kv_bytes_per_token_reads_the_checkpoint(tmp_path: Path) -> None:
    from terrazzo.models.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny")   # 2 layers, 1 KV head of 32, float32
    assert kv_bytes_per_token(ckpt) == 2 * 2 * 1 * 32 * 4
    kv = PoolKv("llm", 1, ckpt, 1, KvSettings(), b"s" * 32)
    key = kv.key("acme", "s", "hello there, " * 200)
    assert len(key.blocks) >= 2 and kv.bytes_per_block == 512 * 64    # token blocks from its tokenizer
    assert kv.affinity.capacity_blocks == (1 << 30) // (512 * 64)


@pytest.mark.parametrize("field,value", [("session_ttl_s", 0), ("session_budget_mib", -1), ("affinity_slack", -2),
                                         ("affinity_slack_tokens", -1), ("block_tokens", 0), ("sesion_ttl_s", 60)])
def test_bad_kv_settings_name_the_field(tmp_path: Path, field: str, value: float) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nkv:\n  {field}: {value}\n")
    with pytest.raises((SpecError, ExecutionError)) as err:
        load_config(cfg)
    assert field in str(err.value) and "run.yaml" in str(err.value)


def test_builtin_engine_keeps_a_scopes_kv_for_its_next_call(tmp_path: Path) -> None:
    """The loop's next iteration prefills only its new tokens, with the same output as a cold prefill;
    another scope finds nothing of it."""
    from terrazzo.models.tiny import make_tiny_checkpoint
    from terrazzo.runtime.executors.llm_engine import LlmEngine

    eng = LlmEngine(make_tiny_checkpoint(tmp_path / "tiny"), threads=1)
    first = eng.encode("the order ships from the north warehouse " * 6)
    cold = eng.generate(first, 6, scope="A")
    assert eng.kept_bytes > 0
    second = first + [int(t) for t in cold.token_ids] + eng.encode("tool result: shipped")[1:]
    warm_kv = eng.prefill(second, 6, scope="A")
    assert warm_kv.meta["cached_tokens"] == len(first)
    assert eng.decode(warm_kv).token_ids == tuple(eng.reference_generate(second, 6))
    assert eng.prefill(second, 6, scope="B").meta["cached_tokens"] == 0
    tight = LlmEngine(make_tiny_checkpoint(tmp_path / "tiny"), threads=1, keep_kv_bytes=1)
    tight.generate(first, 2, scope="A")
    assert tight.kept_bytes == 0 and tight.prefill(first, 2, scope="A").meta["cached_tokens"] == 0


class _Worker:
    """A worker handle that runs nothing: it records the calls it got and takes `hold_s` for each."""

    reports_progress = False

    def __init__(self, name: str, log: list[tuple[str, str]], hold_s: float) -> None:
        self.name, self.log, self.hold_s = name, log, hold_s

    async def run(self, call, on_event=None):
        import asyncio

        from terrazzo.runtime.worker import OpResult

        self.log.append((call.op, self.name))
        await asyncio.sleep(self.hold_s)
        return OpResult(None, self.hold_s, self.name, 0)

    def kill(self) -> None: ...

    def alive(self) -> bool:
        return True

    def progress(self):
        return None

    @property
    def pid(self):
        return None


def test_worker_pools_send_a_scopes_next_call_to_the_worker_holding_its_kv() -> None:
    """Three agent loops on two workers, a tool call between iterations: with their KV scope each loop
    keeps to one worker (where the built-in engine kept its KV), two loops at most per worker, so no
    home is ever over the slack; without the scope the same loops hop between workers."""
    import asyncio

    from terrazzo.runtime.backends.pool_backend import PoolBackend
    from terrazzo.runtime.config import RunConfig
    from terrazzo.runtime.pool_layout import PoolSpec
    from terrazzo.runtime.worker import OpCall

    def run(affine: bool) -> tuple[dict[str, set[str]], int]:
        log: list[tuple[str, str]] = []

        class Fake(PoolBackend):
            async def spawn(self, spec, index):
                return _Worker(f"w{index}", log, 0.02)

        spec = PoolSpec(name="llm", device="cpu", workers=2, ops=("think",))

        async def go() -> int:
            be = Fake(RunConfig(kv=KvSettings(affinity_slack=1)), {"llm": spec})
            await be.start()

            async def loop(name: str, tool_s: float) -> None:
                for k in range(6):
                    await be.submit("llm", OpCall("r", f"{name}{k}", "llm.aggregated", {}), 5.0,
                                    home=name if affine else None)
                    await asyncio.sleep(tool_s)  # the tool call between iterations

            try:
                await asyncio.gather(loop("A", 0.013), loop("B", 0.031), loop("C", 0.007))
                return be.pools["llm"].handoffs
            finally:
                await be.stop()

        handoffs = asyncio.run(go())
        where = dict(log)
        return {n: {where[f"{n}{k}"] for k in range(6)} for n in "ABC"}, handoffs

    kept, handoffs = run(True)
    assert all(len(w) == 1 for w in kept.values()) and handoffs >= 1
    hopped, _ = run(False)
    assert any(len(w) > 1 for w in hopped.values())


def test_the_engine_pool_routes_a_warm_turn_away_from_a_cold_prefill_by_queued_tokens() -> None:
    """Session A's prompt (10 text blocks, ~640 tokens) sits on replica 0; session B's cold 2,560-token call
    is in flight there. A's next turn saves 640 tokens on replica 0 but would queue behind 2,576 tokens of
    work, so it goes to idle replica 1 (one call in flight was within the old 4-call slack). Each replica's
    queued work is its calls' uncached prompt + max_tokens while they are in flight, and 0 after."""
    import asyncio

    from terrazzo.runtime.engines.engine_pool import EnginePool
    from terrazzo.runtime.engines.vllm_server import VllmServerSpec

    kv = KvManager(KvSettings()).pool("llm", 2, "/nonexistent", 1)
    pool = EnginePool("llm", "cpu", VllmServerSpec(model="/nonexistent", served_name="m"), [object(), object()],
                      kv=kv)  # type: ignore[list-item]
    seen: dict[str, list[float]] = {}
    hold = asyncio.Event()

    class Client:
        async def acomplete(self, prompt: str, **_: object) -> str:
            seen[prompt[:1]] = [r.work_tokens for r in pool.replicas]
            if prompt.startswith("b"):
                await hold.wait()
            return "ok"

    for r in pool.replicas:
        r.healthy, r.client = True, Client()  # type: ignore[assignment]
    a1, b, a2 = "a" * 2560, "b" * 10240, "a" * 2560 + "c" * 512

    async def go() -> tuple[int, int, int]:
        keys = [await kv.akey("acme", s, p) for s, p in (("A", a1), ("B", b), ("A", a2))]
        _, r1, _ = await pool.generate(a1, max_tokens=16, key=keys[0])
        cold = asyncio.create_task(pool.generate(b, max_tokens=16, key=keys[1]))
        await asyncio.sleep(0)
        _, r2, _ = await pool.generate(a2, max_tokens=16, key=keys[2])
        hold.set()
        _, rb, _ = await cold
        return r1.index, rb.index, r2.index

    assert asyncio.run(go()) == (0, 0, 1)
    assert seen["a"] == [2560 + 16, 3072 / 256 * 64 + 16]   # A's next turn, in flight on 1 beside B on 0
    assert seen["b"] == [2560 + 16, 0]
    assert [r.work_tokens for r in pool.replicas] == [0, 0] and kv.counts.affinity_overruled == 1
