"""The same runtime on the Ray backend: actors per pool with `tz/<device>` custom resources (one local
Ray started once for this module, num_cpus=2). Skips only if Ray is not importable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from terrazzo.runtime.backends.ray_backend import LOCAL_DEVICE_UNITS  # noqa: E402
from terrazzo.runtime.config import RunConfig, load_config  # noqa: E402
from terrazzo.runtime.executors.llm_engine import LlmEngine  # noqa: E402
from terrazzo.runtime.executors.text import build_prompt, new_message  # noqa: E402
from terrazzo.runtime.failures import ExecutionError  # noqa: E402
from terrazzo.runtime.orchestrator import Runtime  # noqa: E402
from terrazzo.runtime.pool_layout import load_plan  # noqa: E402
from terrazzo.runtime.run_command import make_tiny  # noqa: E402
from terrazzo.spec.spec_loader import agent_from_text, load_agent  # noqa: E402

EX = Path(__file__).resolve().parents[1] / "examples"
DEVICES = ("a40", "a100-80gb-sxm", "b200", "epyc-9654", "gaudi3", "cpu")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 resources={f"tz/{d}": LOCAL_DEVICE_UNITS for d in DEVICES})
    yield
    ray.shutdown()


def test_actors_ask_for_the_device_resource(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "x": {"device": "h100-sxm", "tp": 1, "pp": 1, "batch": 1, "replicas": 1, "pool": "h100"}}}))
    agent = agent_from_text("name: a\nnodes:\n  - {id: x, kind: compute, cpu_s: 1 ms}\n")
    with pytest.raises(ExecutionError, match=r"no tz/h100-sxm resource"):
        asyncio.run(Runtime(agent, load_plan(plan), RunConfig(state_dir=str(tmp_path)), "ray").start())


def test_ray_disaggregated_token_identical_and_rag(tmp_path: Path) -> None:
    """RAG on Ray actors; decode tokens stream out of the decode actor (a Ray streaming generator)."""
    tiny = tmp_path / "tiny"
    make_tiny(tiny)
    config = load_config(EX / "runtime/rag.yaml", state_dir=str(tmp_path), default_checkpoint=str(tiny),
                         max_new_tokens=12)
    events: list[dict] = []

    async def go():
        async with Runtime(load_agent(EX / "agents/rag-support.yaml"), load_plan(EX / "plans/rag-support.json"),
                           config, "ray") as rt:
            return await rt.run("how do I return an item?", on_event=events.append)

    r = asyncio.run(go())
    assert r.ok, r.error
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["index"] for e in tokens][:12] == list(range(12)) and {e["op"] for e in tokens} == {"answer.decode"}
    assert "".join(e["text"] for e in tokens) == r.output["text"]
    order = [e["type"] for e in events if e["op"] == "answer.decode"]
    assert order == ["op_start", *["token"] * len(tokens), "op_end"]
    pre = next(s for s in r.samples if s.op == "answer.prefill")
    dec = next(s for s in r.samples if s.op == "answer.decode")
    assert pre.worker.startswith("prefill-gaudi3/") and dec.worker.startswith("decode-b200/")
    # same prompt truncation and intra-op thread count as the workers (same float summation order)
    eng = LlmEngine(tiny, threads=1, max_prompt_tokens=RunConfig().max_prompt_tokens)
    msg = {**new_message(r.input, "s"), "context": r.output["context"], "history": []}
    assert r.output["llm_tokens"] == eng.reference_generate(eng.encode(build_prompt(msg)), 12)


def test_ray_killed_actor_request_is_retried(tmp_path: Path) -> None:
    agent = agent_from_text('name: f\nnodes:\n  - {id: work, kind: tool, protocol: python, '
                            'function: "drills:slow_echo"}\n')
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "work.compute": {"device": "epyc-9654", "tp": 1, "pp": 1, "batch": 1, "replicas": 2, "pool": "tools"}}}))

    async def go():
        config = RunConfig(state_dir=str(tmp_path), tools={"work": {"idempotent": True}})  # safe to run twice
        async with Runtime(agent, load_plan(plan), config, "ray") as rt:
            task = asyncio.create_task(rt.run("sleep:1.5 hi"))
            for _ in range(2000):
                i = rt.backend.busy_index("tools")
                if i is not None:
                    rt.backend.kill_worker("tools", i)
                    break
                await asyncio.sleep(0.005)
            others = await asyncio.gather(*(rt.run(f"n{i}") for i in range(10)))
            return await task, others, rt.backend.stats()["tools"]

    res, others, stats = asyncio.run(go())
    assert res.ok and res.output["tool_results"] == ["work: echo: hi"], res.error
    assert all(o.ok for o in others) and stats["retried"] == 1
