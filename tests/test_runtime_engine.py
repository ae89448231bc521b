"""The LLM engine: tiny random checkpoint, and disaggregated prefill → KV hand-off to another process →
decode, token-identical to transformers' single-process greedy `generate`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, is_random_checkpoint
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.executors.llm_engine import LlmEngine
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.runtime.run_command import make_tiny
from terrazzo.spec.spec_loader import agent_from_text

PROMPTS = ["where is my order? the parcel is late", "tell me a joke about computers", "a"]
ONE_LLM = """
name: one-llm
nodes:
  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 64, output_tokens: 16}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    msg = make_tiny(d)
    assert "RANDOM WEIGHTS" in msg
    return d


def test_tiny_checkpoint_is_a_labelled_hf_checkpoint(tiny: Path) -> None:
    assert (tiny / "config.json").exists() and (tiny / "model.safetensors").exists()
    assert RANDOM_WEIGHTS_NOTE in (tiny / "README.md").read_text()
    assert is_random_checkpoint(tiny)
    assert json.loads((tiny / "config.json").read_text())["model_type"] == "llama"


def test_prefill_decode_matches_generate_in_process(tiny: Path) -> None:
    eng = LlmEngine(tiny, threads=1)  # same intra-op thread count as the workers: same float summation order
    for prompt in PROMPTS:
        ids = eng.encode(prompt)
        kv = eng.prefill(ids, 20)
        assert kv.nbytes > 0 and kv.prompt_len == len(ids)
        assert list(eng.decode(kv).token_ids) == eng.reference_generate(ids, 20)


def _disagg_plan(tmp: Path, decode_replicas: int = 1) -> Path:
    plan = {"schema": "terrazzo.placement/v1", "placements": {
        "think.prefill": {"device": "gaudi3", "tp": 1, "pp": 1, "batch": 1, "replicas": 1, "pool": "prefill"},
        "think.decode": {"device": "b200", "tp": 1, "pp": 1, "batch": 1, "replicas": decode_replicas,
                         "pool": "decode"}}}
    p = tmp / "plan.json"
    p.write_text(json.dumps(plan))
    return p


def test_disaggregated_across_processes_is_token_identical_and_streams(tiny: Path, tmp_path: Path) -> None:
    """Prefill in one worker process, KV bytes through the orchestrator, decode in another process,
    token-identical to `generate`. Tokens stream out of the decode worker while it produces them: for
    the first prompt the listener kills that worker at the first token, the op reruns on the other decode
    replica, and the stream still carries each token index once, the texts adding up to the answer."""
    from terrazzo.runtime.executors.text import build_prompt, new_message

    n = 128
    config = RunConfig(default_checkpoint=str(tiny), state_dir=str(tmp_path), max_new_tokens=n)
    eng = LlmEngine(tiny, threads=1)  # same intra-op thread count as the workers: same float summation order

    async def go() -> tuple[list, dict]:
        async with Runtime(agent_from_text(ONE_LLM), load_plan(_disagg_plan(tmp_path, 2)), config) as rt:
            streams = []
            for i, prompt in enumerate(PROMPTS):
                events = []
                async for ev in rt.stream(prompt):  # the async-iterator form of run(on_event=...)
                    events.append(ev)
                    if i == 0 and ev["type"] == "token" and ev["index"] == 0:  # decode still running: kill it
                        rt.backend.kill_worker("decode", rt.backend.busy_index("decode"))
                streams.append(events)
            return streams, rt.backend.stats()["decode"]

    streams, stats = asyncio.run(go())
    assert stats["retried"] == 1 and stats["completed"] == len(PROMPTS)
    for prompt, events in zip(PROMPTS, streams, strict=True):
        assert events[-1]["type"] == "result"
        res = events[-1]["result"]
        assert res.ok, res.error
        pre, dec = res.samples
        assert (pre.op, dec.op) == ("think.prefill", "think.decode")
        assert pre.worker.startswith("prefill/") and dec.worker.startswith("decode/")
        assert pre.info["kv_bytes"] > 0
        ids = eng.encode(build_prompt(new_message(prompt, "s")))
        assert res.output["llm_tokens"] == eng.reference_generate(ids, n)
        tokens = [e for e in events if e["type"] == "token"]
        assert [e["index"] for e in tokens] == list(range(len(tokens)))  # each once, in order, despite the rerun
        assert "".join(e["text"] for e in tokens) == res.text
        assert [e["token_id"] for e in tokens if e["token_id"] is not None] == res.output["llm_tokens"]
        assert [(e["type"], e["op"]) for e in events if e["type"] in ("op_start", "op_end")] == [
            ("op_start", "think.prefill"), ("op_end", "think.prefill"), ("op_start", "think.decode"),
            ("op_end", "think.decode")]
