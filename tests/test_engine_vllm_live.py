"""Live tests on a real vLLM CPU server (the session's one server, tests/vllm_live.py): the RAG agent's
LLM op served by vLLM, checked on the server's own /metrics; and a fault drill with two replicas."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from vllm_live import LiveServer

from terrazzo.runtime.config import load_config
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text, load_agent

ROOT = Path(__file__).resolve().parents[1]


def test_rag_agent_tokens_come_from_vllm(vllm_server: LiveServer, tmp_path: Path) -> None:
    """Three RAG requests; vLLM's own counters grow by exactly the tokens and calls the runtime reports."""
    plan = load_plan(ROOT / "examples/runtime/rag-support.plan.json")
    rag_pool = plan.ops["answer.aggregated"].pool  # the pool the plan gives the LLM call
    # the plan sizes that pool at two replicas: one worker per pool keeps every call on the attached server
    config = load_config(ROOT / "examples/runtime/rag-vllm.yaml", state_dir=str(tmp_path), max_workers_per_pool=1,
                         models={"llama-3-8b": {"checkpoint": str(vllm_server.checkpoint)}},
                         vllm={"attach": {rag_pool: [vllm_server.url]}, "max_model_len": 1024})
    agent = load_agent(ROOT / "examples/agents/rag-support.yaml")
    before = {m: vllm_server.metric(m) for m in ("vllm:generation_tokens_total", "vllm:prompt_tokens_total",
                                                 "vllm:request_success_total")}
    events: list[dict[str, Any]] = []

    async def go():
        async with Runtime(agent, plan, config) as rt:
            out = [await rt.run("Where is my order 1234?", on_event=events.append)]
            out += await asyncio.gather(rt.run("how do I return an item?"), rt.run("what is the refund policy?"))
            return out, list(rt.notes), rt.stats()

    results, notes, stats = asyncio.run(go())
    assert all(r.ok for r in results), [r.error for r in results]
    llm = [s for r in results for s in r.samples if s.op == "answer.aggregated"]
    assert llm and all(s.info["engine"] == "vllm-0.32.0" and s.info["replica"] == vllm_server.url for s in llm)
    after = {m: vllm_server.metric(m) for m in before}
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == len(llm)
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == sum(s.tokens for s in llm)
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == \
        sum(s.info["prompt_tokens"] for s in llm)
    # the streamed tokens of the first request are the ones vLLM generated, each once, in order
    tokens = [e for e in events if e["type"] == "token"]
    first = [s for s in results[0].samples if s.op == "answer.aggregated"]
    assert [e["index"] for e in tokens] == list(range(len(tokens))) == list(range(sum(s.tokens for s in first)))
    assert [e["token_id"] for e in tokens] == [t for s in first for t in results[0].output["llm_tokens"]][:len(tokens)]
    assert stats[rag_pool]["engine"] == "vllm-0.32.0" and stats[rag_pool]["completed"] == len(llm)
    assert any("RANDOM WEIGHTS" in n for n in notes)


def _placement(tmp: Path, replicas: int) -> Path:
    doc = {"schema": "terrazzo.placement/v1", "placements": {
        "think.aggregated": {"pool": "llm", "device": "cpu", "replicas": replicas, "engine": "vllm", "batch": 1}}}
    path = tmp / "placement.json"
    path.write_text(json.dumps(doc))
    return path


def test_replica_killed_mid_stream(vllm_server: LiveServer, tmp_path: Path) -> None:
    """Two replicas: the shared server (A) and one the pool launches (B, one sequence at a time). Six long
    streams; when B's running call has streamed a token, B is stopped (SIGSTOP) and SIGKILLed. Its running
    call ends with a clean error event (not resent: its tokens were delivered); the calls queued on B,
    before their first token, complete on A. Every request is accounted for, no token is delivered twice,
    and A's own counters saw exactly the calls that completed."""
    agent = agent_from_text("name: one\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\n")
    n_tokens = 900  # long enough that B is still streaming its first call when the client, lagging, sees a token
    config = load_config(None, state_dir=str(tmp_path), engine="vllm", max_new_tokens=n_tokens,
                         max_workers_per_pool=2, op_timeout_s=600,
                         models={"llama-3-8b": {"checkpoint": str(vllm_server.checkpoint)}},
                         vllm={"attach": {"llm": [vllm_server.url]}, "max_num_seqs": 1, "max_model_len": 1024,
                               "kv_cache_gib": 1, "max_restarts": 0, "dtype": "float32",
                               "request_extra": {"ignore_eos": True}, "log_dir": str(tmp_path / "logs")})
    events: dict[str, list[dict[str, Any]]] = {}
    success_before = vllm_server.metric("vllm:request_success_total")

    async def go():
        async with Runtime(agent, load_plan(_placement(tmp_path, 2)), config) as rt:
            pool = rt.engines["llm"]
            b = pool.replicas[1]
            assert pool.replicas[0].url == vllm_server.url and b.url != vllm_server.url
            tasks = [asyncio.create_task(rt.run(f"question {i}", request_id=f"q{i}",
                                                on_event=events.setdefault(f"q{i}", []).append))
                     for i in range(6)]
            deadline = time.monotonic() + 300
            while not any(any(e["type"] == "token" for e in events[rid]) for rid in b.active):
                assert time.monotonic() < deadline, "no call on replica B streamed a token"
                await asyncio.sleep(0.01)
            await b.host.pause()  # frozen in this loop turn: its stream cannot finish before the kill lands
            streaming = {rid for rid in b.active if any(e["type"] == "token" for e in events[rid])}
            queued = set(b.active) - streaming
            await pool.kill_replica(1)
            results = await asyncio.gather(*tasks)
            return results, streaming, queued, pool.stats(), list(rt.notes)

    results, streaming, queued, stats, notes = asyncio.run(go())
    assert len(streaming) == 1 and len(queued) >= 1, (streaming, queued)
    by_id = {r.request_id: r for r in results}
    assert sorted(by_id) == [f"q{i}" for i in range(6)]
    for rid, r in by_id.items():
        ends = [e for e in events[rid] if e["type"] == "op_end"]
        idx = [e["index"] for e in events[rid] if e["type"] == "token"]
        assert len(ends) == 1 and idx == list(range(len(idx)))  # one end per request, no token twice
        if rid in streaming:
            assert not r.ok and r.error_kind == "WorkerLost" and "not resent" in (r.error or "")
            assert ends[0]["ok"] is False and "after streaming" in ends[0]["error"] and 0 < len(idx) < n_tokens
        else:
            assert r.ok, r.error
            assert len(idx) == n_tokens == len(r.output["llm_tokens"]) and ends[0]["ok"] is True
            sample = next(s for s in r.samples if s.op == "think.aggregated")
            assert sample.worker == "llm/vllm0"  # every completed call was answered by A
            assert sample.info["attempts"] == (2 if rid in queued else 1)
    assert stats["resent"] == len(queued) and stats["broken_after_first_token"] == 1
    assert stats["completed"] == 5 and stats["failed"] == 1
    assert vllm_server.metric("vllm:request_success_total") - success_before == 5
    assert any("replica 1" in n and "exited" in n for n in notes)


def test_prefill_decode_disaggregated_on_vllm(vllm_server: LiveServer, tmp_path: Path) -> None:
    """P/D with a real engine on CPU: the plan splits the call; the prefill pool is the shared server
    (kv_both, vLLM's shared-storage KV connector), the decode pool a server the runtime launches as
    kv_consumer on the same store. The decode server loads the prompt's KV blocks from the store (its own
    counter of prompt tokens by source says how many), and the answer equals the aggregated one."""
    agent = agent_from_text("name: pd\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\n")
    doc = {"schema": "terrazzo.placement/v1", "placements": {
        "think.prefill": {"pool": "pre", "device": "cpu", "engine": "vllm"},
        "think.decode": {"pool": "dec", "device": "cpu", "engine": "vllm"}}}
    (tmp_path / "pd.json").write_text(json.dumps(doc))
    config = load_config(None, state_dir=str(tmp_path), max_new_tokens=12, max_prompt_tokens=1000,
                         models={"llama-3-8b": {"checkpoint": str(vllm_server.checkpoint)}},
                         vllm={"attach": {"pre": [vllm_server.url]}, "kv_store_dir": str(vllm_server.kv_store),
                               "max_model_len": 1024, "kv_cache_gib": 1, "dtype": "float32",
                               "log_dir": str(tmp_path / "logs")})
    question = " ".join(["where is my order? my parcel is late and the agent looked it up."] * 12)
    gen_before = vllm_server.metric("vllm:generation_tokens_total")

    async def go():
        async with Runtime(agent, load_plan(tmp_path / "pd.json"), config) as rt:
            dec_url = rt.engines["dec"].replicas[0].url
            ext0 = vllm_server.metric('vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}', dec_url)
            res = await rt.run(question)
            ext1 = vllm_server.metric('vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}', dec_url)
            kv = rt.engines["dec"].spec.kv_transfer_config
            return res, ext1 - ext0, kv

    res, loaded, kv = asyncio.run(go())
    assert res.ok, res.error
    assert [s.op for s in res.samples] == ["think.prefill", "think.decode"]
    pre, dec = res.samples
    assert pre.info["replica"] == vllm_server.url and pre.info["kv_connector"] == "ExampleConnector"
    assert kv["kv_role"] == "kv_consumer" and dec.tokens == 12
    assert vllm_server.metric("vllm:generation_tokens_total") - gen_before == 1  # the prefill side made 1 token
    assert loaded >= 128 and loaded <= pre.tokens  # whole KV blocks of the prompt came from the store
    # the same prompt aggregated on the shared server gives the same tokens
    from terrazzo.runtime.executors.openai_client import OpenAICompatClient
    from terrazzo.runtime.executors.text import build_prompt, new_message

    ref = OpenAICompatClient(f"{vllm_server.url}/v1", token_ids=True).complete(
        build_prompt(new_message(question, "s")), model="tiny-llama", max_tokens=12)
    assert list(ref.token_ids) == res.output["llm_tokens"]
