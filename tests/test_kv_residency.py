"""KV residency of one replica: longest-prefix match, LRU eviction from a chain's tail, pinning, tiers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.kv.residency import Residency, TierSpec


def chain(name: str, *blocks: int) -> list[tuple[str, int]]:
    return [(f"{name}{i}", b) for i, b in enumerate(blocks)]


def device(cap: int, host: int = 0, disk: int = 0) -> Residency:
    return Residency([TierSpec("device", cap), TierSpec("host", host), TierSpec("disk", disk)])


def test_longest_prefix_match_and_counters() -> None:
    r = device(100)
    assert r.lookup(chain("a", 10, 5), now=0.0).segments == 0
    assert r.insert(chain("a", 10, 5), now=0.0) == 2
    m = r.lookup(chain("a", 10, 5, 7), now=1.0)  # the call's chain grew by one segment
    assert (m.segments, m.blocks, m.missed_blocks) == (2, (15, 0, 0), 7)
    c = r.counters
    assert c.lookups == 2 and c.hit_lookups == 1
    assert c.hit_rate == pytest.approx(15 / (15 + 15 + 7))


def test_lru_evicts_least_recent_and_a_chains_tail_first() -> None:
    r = device(30)
    r.insert(chain("a", 10, 10), now=0.0)
    r.insert(chain("b", 10), now=1.0)
    r.insert(chain("c", 10), now=2.0)  # evicts from a, the least recent: its tail a1 first
    assert r.resident("a1") is None and r.resident("a0") == "device"
    r.lookup(chain("a", 10), now=3.0)  # a0 is now the most recent
    r.insert(chain("d", 10), now=4.0)
    assert r.resident("b0") is None and r.resident("a0") == "device"
    assert r.counters.evicted_blocks[0] == 20 and r.counters.dropped_blocks == 20


def test_demotion_to_host_then_disk_and_back() -> None:
    r = device(10, host=10, disk=10)
    r.insert(chain("a", 10), now=0.0)
    r.insert(chain("b", 10), now=1.0)  # a → host
    r.insert(chain("c", 10), now=2.0)  # b → host, a → disk
    assert (r.resident("a0"), r.resident("b0"), r.resident("c0")) == ("disk", "host", "device")
    m = r.lookup(chain("a", 10), now=3.0)
    assert m.blocks == (0, 0, 10)  # the caller prices the read back from disk
    assert r.resident("a0") == "device" and r.resident("c0") == "host" and r.resident("b0") == "disk"
    assert r.used == [10, 10, 10]


def test_disabled_tier_drops() -> None:
    r = device(10, host=0, disk=10)
    r.insert(chain("a", 10), now=0.0)
    r.insert(chain("b", 10), now=1.0)
    assert r.resident("a0") == "disk"  # host disabled: the next enabled tier


def test_pinned_device_full_refuses_insert() -> None:
    r = device(20)
    r.insert(chain("a", 20), now=0.0)
    assert r.pin(["a0"]) == ["a0"]
    assert r.insert(chain("b", 5), now=1.0) == 0 and r.counters.refused_blocks == 5
    r.unpin(["a0"])
    assert r.insert(chain("b", 5), now=2.0) == 1 and r.resident("a0") is None


def test_a_chain_longer_than_the_device_keeps_its_head() -> None:
    r = device(25)
    assert r.insert(chain("a", 10, 10, 10), now=0.0) == 2
    assert r.resident("a0") == r.resident("a1") == "device" and r.resident("a2") is None


def test_bad_tiers() -> None:
    with pytest.raises(ValueError, match="unknown KV tier"):
        TierSpec("ssd", 3)
    with pytest.raises(ValueError, match="device tier"):
        Residency([TierSpec("host", 3)])


ops = st.lists(st.tuples(st.sampled_from(["insert", "lookup", "drop"]), st.integers(0, 7),
                         st.lists(st.integers(0, 12), min_size=1, max_size=4)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=ops, cap=st.integers(1, 40), host=st.integers(0, 20), disk=st.integers(0, 20),
       loop_blocks=st.lists(st.integers(1, 8), min_size=1, max_size=3))
def test_a_pinned_loop_prefix_is_never_evicted(ops: list, cap: int, host: int, disk: int,
                                               loop_blocks: list[int]) -> None:
    """An agent loop in flight pins its prefix; no sequence of other inserts, lookups or drops moves it."""
    r = device(cap, host, disk)
    loop = chain("loop", *loop_blocks)
    kept = r.insert(loop, now=0.0)
    pinned = r.pin(k for k, _ in loop[:kept])
    assert len(pinned) == kept
    for step, (op, who, blocks) in enumerate(ops, start=1):
        other = chain(f"s{who}-", *blocks)
        if op == "insert":
            r.insert(other, now=float(step))
        elif op == "lookup":
            r.lookup(other, now=float(step))
        else:
            assert not r.drop(pinned[0]) if pinned else True
            r.drop(other[0][0])
        for key in pinned:
            assert r.resident(key) == "device"
        assert all(0 <= u <= c for u, c in zip(r.used, r.capacity, strict=True))
        assert r.used == [sum(e.blocks for e in r.entries.values() if e.tier == t) for t in range(3)]
    assert r.lookup(loop[:kept], now=1e9).blocks[0] == sum(b for _, b in loop[:kept])
    r.unpin(pinned)
    assert r.pinned_blocks == 0


def test_demote_offloads_unpinned_entries() -> None:
    r = device(20, host=20)
    r.insert(chain("a", 5, 5), now=0.0)
    r.pin(["a0"])
    assert r.demote(["a0", "a1"], 1, now=1.0) == 5  # a0 is pinned: it stays
    assert (r.resident("a0"), r.resident("a1")) == ("device", "host")
    assert r.lookup(chain("a", 5, 5), now=2.0).blocks == (5, 5, 0)
    with pytest.raises(ValueError, match="demote"):
        r.demote(["a0"], 0, now=3.0)


def test_prefix_affinity_picks_the_longest_resident_head() -> None:
    from terrazzo.kv.residency import prefix_affinity
    from terrazzo.kv.routing import ReplicaLoad, Router

    reps = [device(100) for _ in range(3)]
    reps[1].insert(chain("s", 10), now=0.0)
    reps[2].insert(chain("s", 10, 4), now=0.0)
    want = chain("s", 10, 4, 3)
    router = Router(prefix_affinity(reps, lambda _k: want, block_tokens=16), affinity_slack_tokens=20)
    loads = [ReplicaLoad(0, 0), ReplicaLoad(1, 0), ReplicaLoad(2, 2, work_tokens=244)]  # 14 blocks: 224 + 20
    assert router.pick_replica(loads, key="k") == 2
    busy = [ReplicaLoad(0, 0), ReplicaLoad(1, 0), ReplicaLoad(2, 2, work_tokens=245)]
    assert router.pick_replica(busy, key="k") == 0  # more queued than the hit saves plus the slack
    assert router.pick_replica(loads, key=None) == 0
    assert prefix_affinity(reps, lambda _k: chain("x", 5))("k", loads) is None


def test_resize_evicts_down_to_the_new_capacity_but_keeps_pins() -> None:
    r = device(30)
    r.insert(chain("a", 10), now=0.0)
    r.insert(chain("b", 10), now=1.0)
    r.pin(["a0"])
    r.resize(0, 5, now=2.0)  # the running batch took the rest
    assert r.resident("a0") == "device" and r.resident("b0") is None and r.used[0] == 10
    r.unpin(["a0"])
    r.resize(0, 5, now=3.0)
    assert r.used[0] == 0
