"""Fused segments (consecutive ops on one pool in one worker round trip) keep the per-op contract:
samples, spans, metrics and events per op, each op's own timeout, and no side effect run twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.executors.memory import MemoryStore
from terrazzo.runtime.orchestrator import RequestResult, Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text

CHAIN = """
name: chain
nodes:
  - {id: a, kind: tool, protocol: python, function: "drills:slow_echo"}
  - {id: b, kind: compute, function: "drills:noop", cpu_s: 1 ms}
  - {id: c, kind: tool, protocol: python, function: "drills:nap_echo"}
  - {id: d, kind: memory_store}
edges:
  - {from: a, to: b}
  - {from: b, to: c}
  - {from: c, to: d}
"""
OPS = ["a.lookup", "a.compute", "b", "c.lookup", "c.compute", "d"]


def _plan(tmp: Path, workers: int = 1) -> Path:
    place = {"device": "epyc-9654", "tp": 1, "pp": 1, "batch": 1, "replicas": workers, "pool": "host"}
    p = tmp / "plan.json"
    p.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": dict.fromkeys(OPS, place)}))
    return p


def _config(tmp: Path, **kw: object) -> RunConfig:
    return RunConfig(state_dir=str(tmp), max_workers_per_pool=2, **kw)  # type: ignore[arg-type]


def test_fused_chain_is_one_round_trip_with_per_op_telemetry_and_events(tmp_path: Path) -> None:
    events: list[dict] = []

    async def go(fuse: bool) -> tuple[RequestResult, dict, Runtime]:
        async with Runtime(agent_from_text(CHAIN), load_plan(_plan(tmp_path)), _config(tmp_path, fuse_ops=fuse)) as rt:
            res = await rt.run("hello", session="s", on_event=events.append if fuse else None)
            return res, rt.backend.stats()["host"], rt

    fused, stats, rt = asyncio.run(go(True))
    plain, plain_stats, _ = asyncio.run(go(False))
    assert fused.ok and plain.ok, (fused.error, plain.error)
    assert stats["submitted"] == 1 and plain_stats["submitted"] == len(OPS)  # one round trip vs one per op
    assert fused.output == plain.output and fused.path == ["a", "b", "c", "d"]
    assert fused.output["tool_results"] == ["a: echo: hello", "c: napped: hello"]
    assert [s.op for s in fused.samples] == OPS and len({s.worker for s in fused.samples}) == 1
    assert all(s.latency_s > 0 and s.exec_s is not None for s in fused.samples)
    spans = {s.attributes["tz.op"]: s for s in rt.telemetry.finished_spans() if "tz.op" in s.attributes}
    assert set(spans) == set(OPS) and all(s.attributes["tz.fused"] == "a+b+c+d" for s in spans.values())
    request_span = next(s for s in rt.telemetry.finished_spans() if s.name == "request chain")
    assert all(s.parent.span_id == request_span.context.span_id for s in spans.values())
    metrics = rt.telemetry.metrics_text()
    for op in OPS:
        assert f'tz_op_latency_seconds_count{{device="epyc-9654",op="{op}",pool="host"}} 1.0' in metrics
    assert [(e["type"], e["op"]) for e in events] == [(t, op) for op in OPS for t in ("op_start", "op_end")]
    assert all(e["pool"] == "host" and e["device"] == "epyc-9654" for e in events)
    assert all(e["latency_s"] >= 0 for e in events if e["type"] == "op_end")


async def _wait_progress(rt: Runtime, index: int) -> int:
    """Wait (bounded) until the pool's worker reports running the fused op at `index`; returns the slot."""
    for _ in range(3000):
        for i, w in enumerate(rt.backend.pools["host"].workers):
            if w is not None and (w.progress() or (-1,))[0] == index:
                return i
        await asyncio.sleep(0.005)
    raise AssertionError(f"no worker reached op {OPS[index]}")


def test_fused_op_keeps_its_own_timeout(tmp_path: Path) -> None:
    """c hangs inside the fused segment: the request fails after c's own 1 s budget (not the segment's
    summed budget), naming c and its config key; the pool's replacement worker serves the next request."""
    async def go() -> tuple[RequestResult, RequestResult, dict]:
        cfg = _config(tmp_path, op_timeouts_s={"c.compute": 1.0})
        async with Runtime(agent_from_text(CHAIN), load_plan(_plan(tmp_path)), cfg) as rt:
            hung = await rt.run("nap:3600 hang")
            return hung, await rt.run("fine"), rt.backend.stats()["host"]

    hung, fine, stats = asyncio.run(go())
    assert not hung.ok and hung.error.startswith("[c.compute@host] timed out after 1 s")
    assert "op_timeouts_s['c.compute']" in hung.error and stats["timeouts"] == 1
    assert [s.op for s in hung.samples if s.error] == ["c.compute"]
    assert fine.ok and fine.output["tool_results"] == ["a: echo: fine", "c: napped: fine"]


def test_failure_inside_a_segment_names_the_op_and_keeps_earlier_samples(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tools={"c": {"function": "drills:no_such_tool"}})

    async def go() -> tuple[RequestResult, dict]:
        async with Runtime(agent_from_text(CHAIN), load_plan(_plan(tmp_path)), cfg) as rt:
            return await rt.run("hi"), rt.backend.stats()["host"]

    res, stats = asyncio.run(go())
    assert not res.ok and res.error.startswith("[c.lookup@host/0")
    assert "cannot load python tool 'drills:no_such_tool'" in res.error
    assert [(s.op, s.error is None) for s in res.samples] == [("a.lookup", True), ("a.compute", True), ("b", True),
                                                              ("c.lookup", False)]
    assert stats["failed"] == 1 and stats["completed"] == 0


def test_fused_segment_retries_pure_ops_but_never_reruns_a_side_effect(tmp_path: Path) -> None:
    """Tool a is idempotent, tool c is not. The worker is killed while a runs: the segment runs again on a
    fresh worker. Then it is killed while c runs: c may have acted, so the request fails naming c."""
    cfg = _config(tmp_path, tools={"a": {"idempotent": True}})

    async def go() -> tuple[RequestResult, dict]:
        async with Runtime(agent_from_text(CHAIN), load_plan(_plan(tmp_path)), cfg) as rt:
            task = asyncio.create_task(rt.run("sleep:0.6 nap:0.6 x"))
            rt.backend.kill_worker("host", await _wait_progress(rt, OPS.index("a.compute")))
            rt.backend.kill_worker("host", await _wait_progress(rt, OPS.index("c.compute")))
            return await task, rt.backend.stats()["host"]

    res, stats = asyncio.run(go())
    assert not res.ok and res.error.startswith("[c.compute@host]") and "not declared idempotent" in res.error
    assert "idempotent: true for node 'c'" in res.error
    assert stats["retried"] == 1 and stats["failed"] == 1


def test_memory_store_is_idempotent_per_key(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite")
    store.store("s", "sess", "first", key="k1")
    store.store("s", "sess", "first", key="k1")  # a retried write
    store.store("s", "sess", "second", key="k2")
    assert store.load("s", "sess") == ["first", "second"]
