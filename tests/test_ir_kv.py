"""decompose-kv: prefix KV as explicit IR values — loops reuse their previous iteration, shared prompts are
shared, the prefill is priced on its new tokens; every form prints, parses back and verifies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.errors import IRError
from terrazzo.ir.context import make_context, parse_module, print_module
from terrazzo.ir.dialects.agent_dialect import LlmCallOp
from terrazzo.ir.dialects.granular_dialect import KvOffloadOp, KvRetainOp, KvReuseOp, PoolOp, PrefillOp
from terrazzo.ir.dialects.node_op import NodeOp, float_prop, mean_prop
from terrazzo.ir.driver import STAGES, compile_path, make_pass, run_pipeline
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.module_graph import structurally_equal
from terrazzo.ir.passes.decompose_kv import feeding_calls
from terrazzo.spec.agent import LlmNode
from terrazzo.spec.prefix import CallTokens, prefix_tokens
from terrazzo.spec.spec_loader import agent_from_text, load_agent

ROOT = Path(__file__).resolve().parent.parent
LOOP_AGENT = str(ROOT / "examples" / "agents" / "tool-loop-agent.yaml")
CLUSTER = str(ROOT / "examples" / "clusters" / "hetero.yaml")


def ops_of(module: ModuleOp, kind: type) -> dict[str, NodeOp]:
    return {op.node_id: op for op in module.walk() if isinstance(op, kind)}


def granular(text_or_path: str, tier: str = "") -> ModuleOp:
    module = parse_module(compile_path(text_or_path, emit="agent"))
    passes = [make_pass(n) for n in STAGES["granular"]]
    if tier:
        passes = [*passes[:-1], make_pass(f"decompose-kv{{tier={tier}}}")]
    return run_pipeline(module, passes)


def test_three_iteration_loop_reuses_its_previous_iteration() -> None:
    """Iteration k of `think` reads iteration k-1's context through the loop's repeat edge: reuse on
    iterations 2 and 3 (the conversation so far), only the system prompt on iteration 1."""
    module = granular(LOOP_AGENT)
    prefill = ops_of(module, PrefillOp)["think.prefill"]
    assert [c.node_id for c in feeding_calls(prefill)] == ["think.decode"]  # itself, one iteration back
    retains = {op.prefix.data: op for op in ops_of(module, KvRetainOp).values()}
    assert set(retains) == {"system_prompt:tool-agent-sys", "conversation"}
    assert list(retains["conversation"].operands) == [prefill.out]
    assert list(retains["system_prompt:tool-agent-sys"].operands) == []  # resident whoever computed it
    reuse = ops_of(module, KvReuseOp)["think.kv.reuse"]
    assert reuse.out in list(prefill.operands)

    node = load_agent(LOOP_AGENT).graph.node("think")
    assert isinstance(node, LlmNode)
    new_in, out = node.input_tokens.expected, node.output_tokens.expected
    history: list[CallTokens] = []
    reused = []
    for _ in range(3):  # the request's three calls, one after another
        reused.append(prefix_tokens(node, history).conversation)
        history.append(CallTokens(new_in, out))
    assert reused[0] == 0 and reused[1] == new_in + out and reused[2] == 2 * (new_in + out)
    cached, new = float_prop(prefill, "cached_tokens"), float_prop(prefill, "new_tokens")
    assert cached == pytest.approx(2048 + np.mean(reused))
    assert new == pytest.approx(new_in)  # priced on the new tokens only
    assert new + cached == pytest.approx(mean_prop(prefill, "input_tokens"))  # the cold prefill's full input
    per_token = kv_bytes_per_token(load_catalog().model("llama-3-8b"), "bf16")
    assert float_prop(reuse, "bytes") == pytest.approx(cached * per_token, abs=1)


SHARED = """
name: shared
nodes:
  - {id: plan, kind: llm, model: llama-3-8b, input_tokens: 200, output_tokens: 50,
     prefix: [{source: system_prompt, name: team-sys, tokens: 1000}, {source: conversation}]}
  - {id: act, kind: llm, model: llama-3-8b, input_tokens: 100, output_tokens: 20,
     prefix: [{source: system_prompt, name: team-sys, tokens: 1000}, {source: conversation}]}
  - {id: judge, kind: llm, model: llama-3-8b, input_tokens: 30, output_tokens: 5,
     prefix: [{source: system_prompt, name: judge-sys, tokens: 500}, {source: conversation}]}
edges:
  - {from: plan, to: act}
  - {from: act, to: judge}
"""


def shared_module(serving: str = "auto") -> ModuleOp:
    agent = agent_from_text(SHARED if serving == "auto" else SHARED.replace("output_tokens:", f"serving: {serving}, "
                                                                            "output_tokens:"))
    return run_pipeline(agent_to_module(agent), [make_pass(n) for n in STAGES["granular"]], make_context())


def test_nodes_naming_one_system_prompt_share_it_and_a_different_prompt_recomputes() -> None:
    module = shared_module()
    prefills = ops_of(module, PrefillOp)
    keys = {op.node_id: op.prefix.data for op in ops_of(module, KvRetainOp).values()}
    assert keys["plan.kv.retain.system_prompt.team-sys"] == keys["act.kv.retain.system_prompt.team-sys"]
    # act continues plan's context (same model, same prompt): all of plan's call is reused
    assert float_prop(prefills["act.prefill"], "cached_tokens") == pytest.approx(1000 + 250)
    assert float_prop(prefills["act.prefill"], "new_tokens") == pytest.approx(100)
    # judge's token sequence starts with another prompt: its conversation is recomputed, its prompt reused
    assert "judge.kv.retain.conversation" not in keys
    assert float_prop(prefills["judge.prefill"], "cached_tokens") == pytest.approx(500)
    assert float_prop(prefills["judge.prefill"], "new_tokens") == pytest.approx(250 + 120 + 30)


def test_a_whole_call_gets_the_attributes_and_its_reuse_rides_alongside() -> None:
    module = shared_module("aggregated")
    calls = ops_of(module, LlmCallOp)
    assert float_prop(calls["act"], "cached_tokens") == pytest.approx(1250)
    assert all(isinstance(v.type, type(calls["act"].operands[0].type)) for v in calls["act"].operands)
    assert ops_of(module, KvReuseOp)["act.kv.reuse"].properties["anchor"].data == "act"  # type: ignore[attr-defined]


@pytest.mark.parametrize("tier", ["", "host", "disk"])
def test_kv_ops_print_parse_and_print_the_same(tier: str) -> None:
    module = granular(LOOP_AGENT, tier)
    text = print_module(module)
    again = parse_module(text)
    assert print_module(again) == text
    assert structurally_equal(module, again)
    offloads = ops_of(again, KvOffloadOp)
    assert len(offloads) == (2 if tier else 0)
    assert all(op.tier.data == tier for op in offloads.values())
    assert print_module(run_pipeline(again, [make_pass("decompose-kv")])) == text  # idempotent


def test_partition_keeps_the_prefix_kv_in_the_prefill_pool() -> None:
    text = compile_path(LOOP_AGENT, emit="partitioned", cluster=CLUSTER,
                        plan=str(ROOT / "examples" / "plans" / "tool-loop-agent.json"))
    module = parse_module(text)
    for pool in (op for op in module.walk() if isinstance(op, PoolOp)):
        inside = {type(op) for op in pool.body.block.ops}
        assert (KvReuseOp in inside) == (PrefillOp in inside), pool.pool.data


def test_decompose_kv_rejects_an_unknown_tier() -> None:
    with pytest.raises(IRError, match="tier 'nvram' is not one of host, disk"):
        granular(LOOP_AGENT, "nvram")


BAD_EDITS = [
    ("cached_tokens = 2.498000e+03", "cached_tokens = 2.998000e+03", "cached_tokens = 2998 is more than the prefix"),
    ("new_tokens = 3.000000e+02", "new_tokens = 4.000000e+02", "new_tokens + cached_tokens = 2898"),
    ('prefix = ["system_prompt:tool-agent-sys", "conversation"], prefix_tokens',
     'prefix = ["system_prompt", "conversation"], prefix_tokens', "prefix source 'system_prompt' is not"),
    ('tz.kv.reuse "think.kv.reuse"(%think.kv.retain.system_prompt.tool-agent-sys, %think.kv.retain.conversation : '
     '!tz.kv, !tz.kv)', 'tz.kv.reuse "think.kv.reuse"', "needs at least one !tz.kv operand"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_EDITS)
def test_verifier_rejects_inconsistent_prefix_attributes(old: str, new: str, message: str) -> None:
    text = print_module(granular(LOOP_AGENT))
    assert old in text
    bad = text.replace(old, new, 1)
    if "edge_bytes = array<i64: 0, 0>} : !tz.kv" in bad and "needs at least one" in message:
        bad = bad.replace("edge_bytes = array<i64: 0, 0>} : !tz.kv", "} : !tz.kv", 1).replace(", } :", "} :")
    with pytest.raises(IRError, match=re.escape(message)):
        parse_module(bad)
