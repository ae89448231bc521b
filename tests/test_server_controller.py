"""The slow path's parts: the pure policy, the mapping of a new plan onto running pools, Retry-After from
measured rates, and pool resizing on the local backend with ops running and queued (none dropped). The
controller end to end, on a served agent, is in test_server_api.py (it shares that module's server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from terrazzo.runtime.backends.local import LocalBackend
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.worker import OpCall
from terrazzo.server.admission import Admission, retry_after_s
from terrazzo.server.api_errors import ApiError
from terrazzo.server.controller import (
    Measurements,
    Policy,
    PoolMeasure,
    decide,
    worker_targets,
)
from terrazzo.server.rates import RateMeter

POLICY = Policy(band_up=1.3, band_down=0.6, dwell_s=60, min_window_s=10, min_rate_per_s=0.05, persist_s=10)


def _m(rate: float, plan: float | None = 10.0, observed: float = 30, since: float = 120, outside: float = 30,
       pools: tuple[PoolMeasure, ...] = ()) -> Measurements:
    return Measurements(rate, observed, plan, since, outside, pools)


# --- policy ---------------------------------------------------------------------------------------
def test_policy_holds_inside_the_band_and_while_measuring() -> None:
    assert decide(_m(12.9), POLICY).action == "hold"
    assert decide(_m(6.0), POLICY).action == "hold"
    d = decide(_m(50.0, observed=5), POLICY)
    assert d.action == "hold" and "measuring" in d.reason


def test_policy_replans_at_the_measured_rate_outside_the_band() -> None:
    up = decide(_m(13.5), POLICY)
    assert up.action == "replan" and up.rate_per_s == 13.5 and "> 1.3 × 10" in up.reason
    down = decide(_m(5.5), POLICY)
    assert down.action == "replan" and down.rate_per_s == 5.5 and "< 0.6 × 10" in down.reason
    idle = decide(_m(0.0), POLICY)
    assert idle.action == "replan" and idle.rate_per_s == POLICY.min_rate_per_s
    assert decide(_m(0.0, plan=POLICY.min_rate_per_s), POLICY).action == "hold"  # already at the floor


def test_policy_persistence_dwell_and_backlog_hold_a_change() -> None:
    d = decide(_m(30.0, outside=4), POLICY)
    assert d.action == "hold" and "for 4.0 s so far" in d.reason  # one noisy window is not a trend
    d = decide(_m(30.0, since=20), POLICY)
    assert d.action == "hold" and "dwell 60 s" in d.reason
    busy = (PoolMeasure("decode", 2, 7, 2), PoolMeasure("cpu", 1, 0, 0))
    d = decide(_m(1.0, pools=busy), POLICY)
    assert d.action == "hold" and "'decode' still has 7 queued" in d.reason
    assert decide(_m(30.0, pools=busy), POLICY).action == "replan"  # a backlog never blocks scaling up


def test_policy_without_a_plan_rate_plans_for_the_measured_one() -> None:
    assert decide(_m(3.0, plan=None, since=10), POLICY).action == "hold"
    d = decide(_m(3.0, plan=None), POLICY)
    assert d.action == "replan" and d.rate_per_s == 3.0


def test_worker_targets_follow_the_new_plan_by_op_or_node() -> None:
    pools = {"llm": ("answer.aggregated",), "cpu": ("history", "remember"), "other": ("untouched",)}
    devices = {"llm": "gaudi3", "cpu": "epyc-9654", "other": "cpu"}
    new = [{"name": "answer.prefill", "node": "answer", "replicas": 3, "device": "gaudi3", "pool": "gaudi3-tp1-pp1"},
           {"name": "answer.decode", "node": "answer", "replicas": 1, "device": "b200", "pool": "b200-tp2-pp1"},
           {"name": "history", "node": "history", "replicas": 1, "device": "epyc-9654", "pool": "cpu"},
           {"name": "remember", "node": "remember", "replicas": 2, "device": "epyc-9654", "pool": "cpu"}]
    targets, moves = worker_targets(pools, devices, new, min_workers=1, max_workers=2)
    assert targets == {"llm": 2, "cpu": 2}  # 3 replicas clamped to the max; 'other' is not in the plan
    assert any("answer.decode on b200-tp2-pp1" in m for m in moves) and not any("history" in m for m in moves)


# --- admission arithmetic -----------------------------------------------------------------------------
def test_retry_after_comes_from_the_measured_service_rate() -> None:
    assert retry_after_s(6, 2.0, item_s=9.0) == 3          # 6 in flight at 2 answers/s
    assert retry_after_s(6, None, item_s=0.4) == 3         # nothing measured: 6 × 0.4 s, rounded up
    assert retry_after_s(1, 50.0, item_s=1.0) == 1         # at least 1 s
    assert retry_after_s(10_000, 0.01, item_s=1.0) == 120  # at most 2 min
    now = [0.0]
    adm = Admission("a", max_in_flight=4, queue_limit=8, window_s=10, predicted_e2e_s=None, clock=lambda: now[0])
    for _ in range(4):
        adm.admit({}, set())
    for t in range(1, 6):                                  # 5 answers in 10 s: 0.5/s
        now[0] = 2.0 * t
        adm.release(0.1, ["p"])
        adm.admit({}, set())
    with pytest.raises(ApiError) as exc:
        adm.admit({}, set())
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "8"  # 4 in flight / 0.5 per s
    with pytest.raises(ApiError) as exc:
        Admission("b", 4, 2, 10, None, lambda: 0.0).admit({"p": {"queued": 2}}, {"p"})
    assert exc.value.code == "pool_queue_full"


def test_rate_meter_window() -> None:
    m = RateMeter(window_s=10, start_s=0)
    for t in range(6):
        m.add(float(t))                            # one per second, at 0..5 s
    assert m.rate(5.0) == pytest.approx(6 / 5)     # 6 events in the 5 s since start
    for t in range(6, 20):
        m.add(float(t))
    assert m.rate(19.5) == pytest.approx(10 / 10)  # the last 10 s only (10..19)


# --- resize on the local backend ----------------------------------------------------------------------
def _call(i: int, sleep_s: float) -> OpCall:
    return OpCall(f"r{i}", "work", "tool.compute", {"target": {"function": "drills:slow_echo"},
                                                   "query": f"sleep:{sleep_s} q{i}", "args": {}})


def test_local_pool_resizes_without_dropping_ops(tmp_path: Path) -> None:
    async def go() -> None:
        backend = LocalBackend(RunConfig(state_dir=str(tmp_path), warmup=False), {"p": PoolSpec("p", "cpu", 1)})
        await backend.start()
        try:
            await backend.resize("p", 3)
            assert backend.load()["p"] == {"queued": 0, "busy": 0, "workers": 3}
            grown = await asyncio.gather(*(backend.submit("p", _call(i, 0.2), 30) for i in range(3)))
            assert len({r.worker for r in grown}) == 3  # three idle slots took one op each
            procs = [w.proc for w in backend.pools["p"].workers if w is not None]  # type: ignore[attr-defined]
            ops = [asyncio.create_task(backend.submit("p", _call(i, 0.3), 30)) for i in range(6)]
            for _ in range(3000):  # bounded wait (30 s): three running, three queued
                if backend.load()["p"]["busy"] >= 3:
                    break
                await asyncio.sleep(0.01)
            assert backend.load()["p"]["busy"] == 3
            await backend.resize("p", 1)
            done = await asyncio.gather(*ops)
            assert sorted(r.value for r in done) == sorted(f"echo: q{i}" for i in range(6))  # none dropped
            assert backend.load()["p"] == {"queued": 0, "busy": 0, "workers": 1}
            live = [w for w in backend.pools["p"].workers if w is not None]
            assert len(live) == 1
            for proc in procs:
                if proc is not live[0].proc:  # type: ignore[attr-defined]
                    proc.join(10)
                    assert not proc.is_alive()  # retired workers exit
            await backend.resize("p", 2)
            again = await asyncio.gather(*(backend.submit("p", _call(i, 0.2), 30) for i in range(2)))
            assert len({r.worker for r in again}) == 2
            with pytest.raises(Exception, match="at least 1"):
                await backend.resize("p", 0)
        finally:
            await backend.stop()

    asyncio.run(go())
