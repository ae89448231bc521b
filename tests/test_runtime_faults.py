"""Fault drills on real worker processes: a worker killed mid-request, a hung tool, and worker crashes
under 50 concurrent requests — every request answered exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from terrazzo.runtime.backends.pool_backend import PoolBackend
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.orchestrator import RequestResult, Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text

AGENT = """
name: fault-agent
nodes:
  - {id: work, kind: tool, protocol: python, function: "drills:FN"}
"""


def _plan(tmp: Path, replicas: int = 2) -> Path:
    place = {"device": "epyc-9654", "tp": 1, "pp": 1, "batch": 1, "replicas": replicas, "pool": "tools"}
    p = tmp / "plan.json"
    p.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "work.lookup": {**place, "pool": "lookup", "replicas": 1}, "work.compute": place}}))
    return p


def _runtime(tmp: Path, fn: str, idempotent: bool | None = True, **cfg: object) -> Runtime:
    """The fault agent; its tool is declared idempotent (safe to run again) unless `idempotent` says otherwise."""
    tools = {"work": {"idempotent": idempotent}} if idempotent is not None else {}
    config = RunConfig(state_dir=str(tmp), min_workers_per_pool=1, max_workers_per_pool=2, tools=tools,  # type: ignore[arg-type]
                       **cfg)  # type: ignore[arg-type]
    return Runtime(agent_from_text(AGENT.replace("FN", fn)), load_plan(_plan(tmp)), config)


async def _kill_busy(backend: PoolBackend, pool: str) -> int:
    """Wait (bounded) until a worker of `pool` holds an op, then SIGKILL it; returns its pid."""
    for _ in range(2000):
        i = backend.busy_index(pool)
        if i is not None:
            pid = backend.kill_worker(pool, i)
            assert pid is not None
            return pid
        await asyncio.sleep(0.005)
    raise AssertionError("no worker ever became busy")


def test_killed_worker_request_completes_on_another_replica(tmp_path: Path) -> None:
    async def go() -> tuple[RequestResult, int, dict]:
        async with _runtime(tmp_path, "slow_echo") as rt:
            task = asyncio.create_task(rt.run("sleep:1.5 hello"))
            pid = await _kill_busy(rt.backend, "tools")
            return await task, pid, rt.backend.stats()["tools"]

    res, pid, stats = asyncio.run(go())
    assert res.ok, res.error
    assert res.output["tool_results"] == ["work: echo: hello"]
    assert stats["retried"] == 1 and stats["completed"] == 1 and stats["failed"] == 0
    done = [s for s in res.samples if s.op == "work.compute"]
    assert len(done) == 1 and str(pid) not in done[0].worker


def test_killed_worker_does_not_rerun_a_tool_with_side_effects(tmp_path: Path) -> None:
    """A python tool not declared idempotent (the default) is never run twice: the request fails naming
    the op and the fix; the other replica keeps serving."""
    async def go() -> tuple[RequestResult, RequestResult, dict]:
        async with _runtime(tmp_path, "slow_echo", idempotent=None) as rt:
            task = asyncio.create_task(rt.run("sleep:1.5 charge the card"))
            await _kill_busy(rt.backend, "tools")
            res = await task
            return res, await rt.run("sleep:0 next"), rt.backend.stats()["tools"]

    res, nxt, stats = asyncio.run(go())
    assert not res.ok and res.error.startswith("[work.compute@tools]")
    assert "not declared idempotent" in res.error and "idempotent: true for node 'work'" in res.error
    assert stats["retried"] == 0 and stats["failed"] == 1
    assert nxt.ok and nxt.output["tool_results"] == ["work: echo: next"]


def test_hung_tool_times_out_without_affecting_others(tmp_path: Path) -> None:
    async def go() -> list[RequestResult]:
        async with _runtime(tmp_path, "slow_echo", op_timeouts_s={"work.compute": 1.0}) as rt:
            hung = asyncio.create_task(rt.run("sleep:3600 never", request_id="hung"))
            others = [asyncio.create_task(rt.run(f"sleep:0.01 n{i}", request_id=f"ok{i}")) for i in range(10)]
            return [await hung, *[await t for t in others]]

    hung, *others = asyncio.run(go())
    assert not hung.ok and "timed out after 1 s" in hung.error and "op_timeouts_s['work.compute']" in hung.error
    assert all(r.ok for r in others), [r.error for r in others]
    assert [r.output["tool_results"][0] for r in others] == [f"work: echo: n{i}" for i in range(10)]


def test_worker_crashes_under_50_concurrent_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five requests make their worker exit abruptly (os._exit) the first time; kills add more. All 50
    requests come back, each once, all successful (the crashed ops ran again on fresh replicas)."""
    monkeypatch.setenv("TZ_CRASH_DIR", str(tmp_path))
    n = 50

    async def go() -> tuple[list[RequestResult], dict]:
        async with _runtime(tmp_path, "crash_once", max_attempts=4) as rt:
            tasks = [asyncio.create_task(rt.run(("crash " if i % 10 == 3 else "") + f"req {i}", request_id=f"r{i}"))
                     for i in range(n)]
            await _kill_busy(rt.backend, "tools")
            results = await asyncio.gather(*tasks)
            return list(results), rt.backend.stats()["tools"]

    results, stats = asyncio.run(go())
    assert sorted(r.request_id for r in results) == sorted(f"r{i}" for i in range(n))  # each exactly once
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for i, r in enumerate(results):
        assert r.output["tool_results"] == [f"work: survived: {'crash ' if i % 10 == 3 else ''}req {i}"]
    assert stats["completed"] == n and stats["failed"] == 0 and stats["retried"] >= 5
    assert stats["submitted"] == n
