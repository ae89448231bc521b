"""LLM prefix sources and multi-turn sessions: located errors for bad specs, and the prefix sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_spec_errors import EMPTY, check, write

from terrazzo.errors import SpecError
from terrazzo.spec.agent import LlmNode
from terrazzo.spec.distributions import Dist
from terrazzo.spec.prefix import CallTokens, full_input_tokens, mean_prefix_sizes, prefix_tokens, with_prefix
from terrazzo.spec.spec_loader import agent_from_text, load_agent, load_workload

ROOT = Path(__file__).resolve().parent.parent


def llm_agent(prefix: str, extra: str = "") -> str:
    return f"""
        name: a
        nodes:
          - id: think
            kind: llm
            model: m
            input_tokens: 100
            output_tokens: 50
            prefix:
{prefix}
{extra}"""


BAD_AGENTS = {
    "system_prompt_without_tokens": (llm_agent("              - {source: system_prompt, name: sys}"), 9,
                                     "nodes.0.prefix.0", ("needs 'name'", "missing tokens")),
    "context_without_name": (llm_agent("              - source: context\n                tokens: 500"), 9,
                             "nodes.0.prefix.0", ("missing name",)),
    "conversation_with_tokens": (llm_agent("              - {source: conversation, tokens: 10}"), 9,
                                 "nodes.0.prefix.0", ("takes neither 'name' nor 'tokens'",)),
    "unknown_source": (llm_agent("              - {source: history}"), 9, "nodes.0.prefix.0.source",
                       ("'system_prompt', 'conversation' or 'context'", "listed values")),
    "misspelt_key": (llm_agent("              - {source: system_prompt, name: s, tokens: 5, tokns: 6}"), 9,
                     "nodes.0.prefix.0.tokns", ("unknown field 'tokns'",)),
    "conversation_not_last": (llm_agent("              - {source: conversation}\n"
                                        "              - {source: system_prompt, name: s, tokens: 5}"), 3,
                              "nodes.0", ("'conversation' must come last",)),
    "tokens_over_limit": (llm_agent("              - {source: context, name: doc, tokens: 1e9}"), 9,
                          "nodes.0.prefix.0.tokens", ("over the limit",)),
    "shared_name_two_sizes": (llm_agent("              - {source: system_prompt, name: sys, tokens: 2048}", """
          - id: other
            kind: llm
            model: m
            input_tokens: 100
            output_tokens: 50
            prefix:
              - {source: system_prompt, name: sys, tokens: 1024}
        edges:
          - {from: think, to: other}
"""), 17, "nodes.1.prefix.0", ("shared prefix 'sys' differs in tokens between 'think' and 'other'", "rename")),
}


@pytest.mark.parametrize("case", BAD_AGENTS)
def test_bad_prefix_gives_one_located_error(tmp_path: Path, case: str) -> None:
    text, line, field, needles = BAD_AGENTS[case]
    path = write(tmp_path, "agent.yaml", text)
    with pytest.raises(SpecError) as info:
        load_agent(path, EMPTY)
    check(info.value, path, line, field, *needles)


BAD_WORKLOADS = {
    "zero_turns": ("arrival: {rate_per_s: 2}\nsessions:\n  turns: 0\n", 3, "sessions.turns",
                   ("at least one turn",)),
    "turns_misspelt": ("arrival: {rate_per_s: 2}\nsessions:\n  turn: 3\n", 3, "sessions.turn",
                       ("unknown field 'turn'",)),
    "think_time_wrong_unit": ("arrival: {rate_per_s: 2}\nsessions:\n  turns: 3\n  think_time_s: 4 MB\n", 4,
                              "sessions.think_time_s", ("'MB' is a unit of bytes",)),
    "too_many_turns": ("arrival: {rate_per_s: 2}\nsessions:\n  turns: {dist: uniform, low: 1, high: 1e6}\n", 3,
                       "sessions.turns", ("over the limit of 10000 turns",)),
}


@pytest.mark.parametrize("case", BAD_WORKLOADS)
def test_bad_sessions_give_one_located_error(tmp_path: Path, case: str) -> None:
    text, line, field, needles = BAD_WORKLOADS[case]
    path = write(tmp_path, "workload.yaml", text)
    with pytest.raises(SpecError) as info:
        load_workload(path)
    check(info.value, path, line, field, *needles)


def test_no_prefix_is_the_default_and_changes_nothing() -> None:
    agent = load_agent(ROOT / "examples" / "agents" / "rag-support.yaml")
    node = agent.graph.node("answer")
    assert isinstance(node, LlmNode) and node.prefix == []
    assert prefix_tokens(node, [CallTokens(100, 50)]).total == 0.0
    assert mean_prefix_sizes(agent.graph)["answer"].total == 0.0
    assert load_workload(ROOT / "examples" / "workloads" / "steady-5rps.yaml").sessions is None


def test_prefix_of_one_call_counts_shared_once_and_the_conversation_so_far() -> None:
    agent = load_agent(ROOT / "examples" / "agents" / "tool-loop-agent.yaml")
    node = agent.graph.node("think")
    assert isinstance(node, LlmNode)
    history = [CallTokens(300, 150), CallTokens(280, 120)]
    sizes = prefix_tokens(node, history)
    assert (sizes.shared, sizes.conversation) == (2048.0, 850.0)
    assert prefix_tokens(node, []).total == 2048.0
    assert prefix_tokens(node, history, drawn={"tool-agent-sys": 1000}).shared == 1000.0
    assert full_input_tokens(node, 310, history) == 2048 + 850 + 310


def test_three_iteration_loop_mean_conversation_matches_enumeration() -> None:
    """Iteration i of the 3-call loop sees i-1 earlier calls; the mean over the 3 calls is one call's tokens."""
    agent = load_agent(ROOT / "examples" / "agents" / "tool-loop-agent.yaml")
    assert agent.graph.visits()["think"] == pytest.approx(3.0)
    per_call = 300 + 150
    enumerated = np.mean([k * per_call for k in range(3)])
    sizes = mean_prefix_sizes(agent.graph)["think"]
    assert sizes.shared == 2048.0
    assert sizes.conversation == pytest.approx(enumerated)


def test_sequence_and_shared_system_prompt_across_a_subagent() -> None:
    """plan -> sub-agent(work) -> answer: each call's conversation is what ran before it, sub-agent included."""
    agent = agent_from_text("""
        name: seq
        nodes:
          - {id: plan, kind: llm, model: llama-3-8b, input_tokens: 100, output_tokens: 10,
             prefix: [{source: system_prompt, name: sys, tokens: 500}]}
          - id: sub
            kind: subagent
            graph:
              nodes:
                - {id: work, kind: llm, model: llama-3-8b, input_tokens: 40, output_tokens: 20,
                   prefix: [{source: system_prompt, name: sys, tokens: 500}, {source: conversation}]}
          - {id: answer, kind: llm, model: llama-3-8b, input_tokens: 5, output_tokens: 5,
             prefix: [{source: conversation}]}
        edges:
          - {from: plan, to: sub}
          - {from: sub, to: answer}
        """)
    sizes = mean_prefix_sizes(agent.graph)
    assert sizes["plan"].total == 500.0  # no conversation source: only its system prompt
    assert (sizes["sub/work"].shared, sizes["sub/work"].conversation) == (500.0, 110.0)
    assert (sizes["answer"].shared, sizes["answer"].conversation) == (0.0, 110.0 + 60.0)


def test_sessions_carry_the_conversation_across_turns(tmp_path: Path) -> None:
    """Fixed 3 turns of a one-call chat: turn t sees (t-1) earlier turns; the mean is one turn's tokens."""
    agent = load_agent(ROOT / "examples" / "agents" / "chat-agent.yaml")
    text = "arrival: {rate_per_s: 3}\nsessions: {turns: 3, think_time_s: 20 s}\n"
    workload = load_workload(write(tmp_path, "workload.yaml", text), agent)
    assert workload.sessions is not None
    assert workload.sessions.turn_moments() == (3.0, 3.0)
    assert workload.sessions.session_rate_per_s(3.0) == pytest.approx(1.0)
    turn = 120 + 200
    assert mean_prefix_sizes(agent.graph, workload)["reply"].conversation == pytest.approx(np.mean([0, turn, 2 * turn]))
    assert mean_prefix_sizes(agent.graph)["reply"].conversation == 0.0  # one request alone has no history
    rng = np.random.default_rng(1)
    shipped = load_workload(ROOT / "examples" / "workloads" / "chat-sessions.yaml", agent)
    assert shipped.sessions is not None
    draws = [shipped.sessions.draw_turns(rng) for _ in range(200)]
    assert min(draws) >= 2 and max(draws) <= 6



@pytest.mark.parametrize("new", [
    Dist.fixed(300), Dist(dist="uniform", low=100, high=500), Dist(dist="normal", mean=300, std=50),
    Dist(dist="lognormal", mean=300, cv=0.3), Dist(dist="exponential", mean=300),
    Dist(dist="empirical", values=[100, 500], weights=[3, 1]),
])
def test_full_input_distribution_keeps_the_mean_and_the_spread(new: Dist) -> None:
    full = with_prefix(new, 2048)
    assert full.expected == pytest.approx(new.expected + 2048)
    rng = np.random.default_rng(0)
    assert np.std(full.sample(rng, 20_000)) == pytest.approx(np.std(new.sample(rng, 20_000)), rel=0.05, abs=1e-9)
    assert with_prefix(new, 0) is new
