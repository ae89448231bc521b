"""Agent graphs: every node kind through YAML and back, sub-agents, and expected visits per request."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import SpecError
from terrazzo.spec.agent import Agent, AgentGraph, SubagentNode
from terrazzo.spec.builder import AgentBuilder
from terrazzo.spec.distributions import Dist
from terrazzo.spec.spec_loader import agent_from_text, load_agent

EMPTY = Catalog()  # enough for graphs whose nodes name no model


def graph(text: str, catalog: Catalog = EMPTY) -> AgentGraph:
    return agent_from_text(textwrap.dedent(text), catalog).graph


def dump(agent: Agent) -> str:
    return yaml.safe_dump(agent.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


# --------------------------------------------------------------------------------------------
# YAML round trip, one document per node kind


def _tool_http(a: Agent) -> None:
    n = a.graph.node("t")
    assert (n.kind, n.protocol, n.endpoint) == ("tool", "http", "https://api.example/v1")
    assert n.latency_s == Dist.fixed(0.3)
    assert n.latency_s.expected == pytest.approx(0.3)
    assert n.cpu_s == Dist.fixed(0.002)
    assert (n.request_bytes, n.response_bytes) == (2048.0, 1e6)


def _tool_python(a: Agent) -> None:
    n = a.graph.node("t")
    assert (n.protocol, n.function, n.endpoint) == ("python", "tools.calc:evaluate", None)
    assert n.latency_s.dist == "uniform"
    assert (n.latency_s.low, n.latency_s.high) == (pytest.approx(0.01), pytest.approx(0.05))
    assert n.latency_s.expected == pytest.approx(0.03)


def _llm(a: Agent) -> None:
    n = a.graph.node("l")
    assert (n.model, n.dtype, n.serving) == ("llama-3-70b", "fp8", "disaggregated")
    assert n.input_tokens == Dist(dist="normal", mean=1000, std=200)
    assert n.output_tokens == Dist.fixed(2000)  # '2k'


def _memory_load(a: Agent) -> None:
    n = a.graph.node("m")
    assert (n.kind, n.store) == ("memory_load", "profiles")
    assert n.data_bytes == Dist.fixed(2048)


def _memory_store(a: Agent) -> None:
    n = a.graph.node("m")
    assert (n.kind, n.store) == ("memory_store", "default")
    assert n.data_bytes == Dist(dist="empirical", values=[1e3, 2**20], weights=[3, 1])
    assert n.data_bytes.expected == pytest.approx((3 * 1e3 + 2**20) / 4)


def _memory_lookup(a: Agent) -> None:
    n = a.graph.node("m")
    assert (n.index_vectors, n.dimension, n.k, n.index) == (50_000, 768, 10, "flat")
    assert n.embed_model == "all-minilm-l6-v2"
    assert n.query_tokens == Dist.fixed(32)


def _embed(a: Agent) -> None:
    n = a.graph.node("e")
    assert (n.model, n.tokens) == ("all-minilm-l6-v2", Dist.fixed(256))


def _stt(a: Agent) -> None:
    n = a.graph.node("s")
    assert n.model == "whisper-large-v3"
    assert n.audio_s == Dist(dist="exponential", mean=6.0)
    assert n.output_tokens == Dist.fixed(64)


def _tts(a: Agent) -> None:
    n = a.graph.node("s")
    assert (n.model, n.cpu_s_per_token) == (None, 0.004)
    assert n.input_tokens == Dist.fixed(120)


def _compute(a: Agent) -> None:
    n = a.graph.node("c")
    assert (n.function, n.cpu_s, n.join) == ("app.rank:score", Dist.fixed(0.015), "all")


def _branch(a: Agent) -> None:
    assert a.graph.node("b").kind == "branch"
    assert sorted((e.dst, e.probability) for e in a.graph.successors("b")) == [("x", 0.4), ("y", 0.6)]
    assert a.graph.successors("b")[0].condition == "needs tools"


def _loop(a: Agent) -> None:
    n = a.graph.node("again")
    assert (n.body, n.bound) == ("work", 4)
    assert a.graph.repeat_edges() == {2}


def _subagent_inline(a: Agent) -> None:
    n = a.graph.node("sub")
    assert isinstance(n, SubagentNode) and n.agent is None
    assert [c.id for c in n.graph.nodes] == ["i1", "i2"]
    assert [p for p, _ in a.graph.leaves()] == ["pre", "sub/i1", "sub/i2"]


ROUND_TRIP: dict[str, tuple[str, Callable[[Agent], None]]] = {
    "tool-http": ("""
        name: rt
        nodes:
          - {id: t, kind: tool, protocol: http, endpoint: "https://api.example/v1", latency_s: 300 ms,
             cpu_s: 2 ms, request_bytes: 2 KiB, response_bytes: 1 MB}
        """, _tool_http),
    "tool-python": ("""
        name: rt
        nodes:
          - id: t
            kind: tool
            protocol: python
            function: tools.calc:evaluate
            latency_s: {dist: uniform, low: 10 ms, high: 50 ms}
        """, _tool_python),
    "llm": ("""
        name: rt
        nodes:
          - id: l
            kind: llm
            model: llama-3-70b
            dtype: fp8
            serving: disaggregated
            input_tokens: {dist: normal, mean: 1000, std: 200}
            output_tokens: 2k
        """, _llm),
    "memory_load": ("""
        name: rt
        nodes:
          - {id: m, kind: memory_load, store: profiles, data_bytes: 2 KiB}
        """, _memory_load),
    "memory_store": ("""
        name: rt
        nodes:
          - id: m
            kind: memory_store
            data_bytes: {dist: empirical, values: [1 kB, 1 MiB], weights: [3, 1]}
        """, _memory_store),
    "memory_lookup": ("""
        name: rt
        nodes:
          - {id: m, kind: memory_lookup, index_vectors: 50000, dimension: 768, k: 10, index: flat}
        """, _memory_lookup),
    "embed": ("""
        name: rt
        nodes:
          - {id: e, kind: embed, tokens: 256 tok}
        """, _embed),
    "stt": ("""
        name: rt
        nodes:
          - {id: s, kind: stt, audio_s: {dist: exponential, mean: 6 s}}
        """, _stt),
    "tts": ("""
        name: rt
        nodes:
          - {id: s, kind: tts, input_tokens: 120, cpu_s_per_token: 0.004}
        """, _tts),
    "compute": ("""
        name: rt
        nodes:
          - {id: c, kind: compute, function: "app.rank:score", cpu_s: 15 ms, join: all}
        """, _compute),
    "branch": ("""
        name: rt
        nodes:
          - {id: b, kind: branch, description: decide}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
        edges:
          - {from: b, to: x, probability: 0.4, condition: needs tools}
          - {from: b, to: y, probability: 0.6}
        """, _branch),
    "loop": ("""
        name: rt
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
          - {id: work, kind: compute, cpu_s: 1}
          - {id: again, kind: loop, body: work, bound: 4}
        edges:
          - {from: start, to: work}
          - {from: work, to: again}
          - {from: again, to: work}
        """, _loop),
    "subagent-inline": ("""
        name: rt
        nodes:
          - {id: pre, kind: compute, cpu_s: 1}
          - id: sub
            kind: subagent
            graph:
              nodes:
                - {id: i1, kind: compute, cpu_s: 1}
                - {id: i2, kind: compute, cpu_s: 1}
              edges:
                - {from: i1, to: i2}
        edges:
          - {from: pre, to: sub, data_bytes: 1 KiB}
        """, _subagent_inline),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIP))
def test_round_trip_each_node_kind(case: str, catalog: Catalog) -> None:
    text, check = ROUND_TRIP[case]
    agent = agent_from_text(textwrap.dedent(text), catalog)
    check(agent)
    again = agent_from_text(dump(agent), catalog)
    assert again == agent
    check(again)
    assert dump(again) == dump(agent)


def test_round_trip_covers_every_node_kind() -> None:
    from terrazzo.spec.agent import NODE_KINDS

    kinds = {n["kind"] for t, _ in ROUND_TRIP.values() for n in yaml.safe_load(textwrap.dedent(t))["nodes"]}
    assert kinds == set(NODE_KINDS)


def test_nodes_may_sit_under_graph_or_at_top_level() -> None:
    flat = agent_from_text("name: a\nnodes:\n  - {id: c, kind: compute, cpu_s: 1}\n", EMPTY)
    nested = agent_from_text("name: a\ngraph:\n  nodes:\n    - {id: c, kind: compute, cpu_s: 1}\n", EMPTY)
    assert flat == nested
    assert flat.graph.node("c").cpu_s == Dist.fixed(1.0)


def test_edge_data_bytes_and_aliases(catalog: Catalog, specs: Path) -> None:
    agent = load_agent(specs / "voice.yaml", catalog)
    first = agent.graph.edges[0]
    assert (first.src, first.dst, first.data_bytes) == ("asr", "think", 2048.0)
    dumped = agent.model_dump(by_alias=True)["graph"]["edges"][0]
    assert (dumped["from"], dumped["to"]) == ("asr", "think")


def test_voice_example_file(catalog: Catalog, specs: Path) -> None:
    agent = load_agent(specs / "voice.yaml", catalog)
    assert agent.name == "voice"
    assert [n.kind for n in agent.graph.nodes] == ["stt", "llm", "branch", "tool", "loop", "tts"]
    assert agent.graph.node("search").latency_s == Dist.fixed(0.3)
    assert agent.graph.node("asr").audio_s == Dist.fixed(8.0)
    assert agent.graph.node("think").input_tokens == Dist(dist="lognormal", mean=900, cv=0.5)
    assert agent_from_text(dump(agent), catalog) == agent


def test_builder_matches_yaml(catalog: Catalog, specs: Path) -> None:
    built = (
        AgentBuilder("voice", "asr -> think -> route (30% search and loop back, 70% speak) -> speak")
        .node("asr", "stt", audio_s="8 s")
        .node("think", "llm", model="llama-3-70b", input_tokens={"dist": "lognormal", "mean": 900, "cv": 0.5},
              output_tokens=200)
        .node("route", "branch")
        .node("search", "tool", protocol="http", endpoint="https://search.example/api", latency_s="300 ms")
        .node("again", "loop", body="think", bound=3)
        .node("speak", "tts", input_tokens=200)
        .edge("asr", "think", data_bytes="2 KiB")
        .edge("think", "route")
        .edge("route", "search", probability=0.3)
        .edge("route", "speak", probability=0.7)
        .chain("search", "again", "think")
        .edge("again", "speak")
        .build(catalog)
    )
    assert built == load_agent(specs / "voice.yaml", catalog)


# --------------------------------------------------------------------------------------------
# Sub-agents from files


def test_subagent_file_is_resolved_relative_to_parent(
    catalog: Catalog, specs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the path in the file must not depend on the working directory
    parent = load_agent(specs / "with_subagent.yaml", catalog)
    child = load_agent(specs / "sub" / "search.yaml", catalog)
    node = parent.graph.node("research")
    assert isinstance(node, SubagentNode)
    assert node.agent is None and node.graph == child.graph
    assert [p for p, _ in parent.graph.leaves()] == [
        "plan", "pick", "research/query", "research/lookup", "research/summarise", "answer",
    ]
    # the resolved agent writes out as an inline sub-agent and reads back the same
    assert agent_from_text(dump(parent), catalog) == parent


def test_subagent_visits_from_file(catalog: Catalog, specs: Path) -> None:
    v = load_agent(specs / "with_subagent.yaml", catalog).graph.visits()
    assert v == pytest.approx({
        "plan": 1.0, "pick": 1.0, "research/query": 0.25, "research/lookup": 0.25,
        "research/summarise": 0.25, "answer": 1.0,
    })


def test_subagent_file_in_subdirectory_of_tmp(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "inner.yaml").write_text(
        "name: inner\nnodes:\n  - {id: a, kind: compute, cpu_s: 1}\n  - {id: b, kind: compute, cpu_s: 2}\n"
        "edges:\n  - {from: a, to: b}\n"
    )
    (tmp_path / "outer.yaml").write_text(
        "name: outer\nnodes:\n  - {id: s, kind: subagent, agent: parts/inner.yaml}\n"
        "  - {id: t, kind: subagent, agent: parts/inner.yaml}\nedges:\n  - {from: s, to: t}\n"
    )
    agent = load_agent(tmp_path / "outer.yaml", EMPTY)
    assert agent.graph.visits() == {"s/a": 1.0, "s/b": 1.0, "t/a": 1.0, "t/b": 1.0}
    assert agent.graph.node("s").graph.node("b").cpu_s == Dist.fixed(2.0)


def test_subagent_file_inside_inline_subagent_is_resolved(tmp_path: Path) -> None:
    """An inline sub-agent may itself contain a sub-agent read from a file; it must be flattened too."""
    (tmp_path / "child.yaml").write_text(
        "name: child\nnodes:\n  - {id: c1, kind: compute, cpu_s: 1}\n  - {id: c2, kind: compute, cpu_s: 1}\n"
        "edges:\n  - {from: c1, to: c2}\n"
    )
    (tmp_path / "parent.yaml").write_text(textwrap.dedent("""
        name: parent
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
          - id: outer
            kind: subagent
            graph:
              nodes:
                - {id: pre, kind: compute, cpu_s: 1}
                - {id: inner, kind: subagent, agent: child.yaml}
              edges:
                - {from: pre, to: inner}
        edges:
          - {from: start, to: outer}
        """))
    agent = load_agent(tmp_path / "parent.yaml", EMPTY)
    assert [p for p, _ in agent.graph.leaves()] == ["start", "outer/pre", "outer/inner/c1", "outer/inner/c2"]
    assert agent.graph.visits() == {"start": 1.0, "outer/pre": 1.0, "outer/inner/c1": 1.0, "outer/inner/c2": 1.0}


def test_subagent_including_itself_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nnodes:\n  - {id: x, kind: compute, cpu_s: 1}\n"
                                     "  - {id: me, kind: subagent, agent: b.yaml}\nedges:\n  - {from: x, to: me}\n")
    (tmp_path / "b.yaml").write_text("name: b\nnodes:\n  - {id: y, kind: subagent, agent: ./a.yaml}\n")
    with pytest.raises(SpecError) as info:
        load_agent(tmp_path / "a.yaml", EMPTY)
    err = info.value
    assert err.file == str(tmp_path / "b.yaml")
    assert (err.line, err.field) == (3, "nodes.0.agent")
    assert "includes itself" in str(err) and "Fix:" in str(err)


def test_subagent_needs_exactly_one_source() -> None:
    with pytest.raises(SpecError, match=r"exactly one of 'agent'"):
        agent_from_text("name: a\nnodes:\n  - {id: s, kind: subagent}\n", EMPTY)


# --------------------------------------------------------------------------------------------
# Expected visits

CHAIN = """
    name: chain
    nodes:
      - {id: a, kind: compute, cpu_s: 1}
      - {id: b, kind: tool, protocol: python, function: "m:f"}
      - {id: c, kind: memory_store}
      - {id: d, kind: tts, input_tokens: 10}
    edges:
      - {from: a, to: b}
      - {from: b, to: c}
      - {from: c, to: d}
"""


def test_chain_visits_are_one() -> None:
    g = graph(CHAIN)
    assert g.visits() == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert g.topo_order() == ["a", "b", "c", "d"]


def test_branch_arms_get_probabilities_and_merge_gets_one() -> None:
    g = graph("""
        name: br
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
          - {id: pick, kind: branch}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: y, kind: compute, cpu_s: 1}
          - {id: z, kind: compute, cpu_s: 1}
          - {id: merge, kind: compute, cpu_s: 1}
          - {id: after, kind: compute, cpu_s: 1}
        edges:
          - {from: start, to: pick}
          - {from: pick, to: x, probability: 0.2}
          - {from: pick, to: y, probability: 0.5}
          - {from: pick, to: z, probability: 0.3}
          - {from: x, to: merge}
          - {from: y, to: merge}
          - {from: z, to: merge}
          - {from: merge, to: after}
        """)
    assert g.visits() == pytest.approx(
        {"start": 1.0, "pick": 1.0, "x": 0.2, "y": 0.5, "z": 0.3, "merge": 1.0, "after": 1.0}, abs=1e-12
    )


FORK = """
    name: fork
    nodes:
      - {{id: a, kind: compute, cpu_s: 1}}
      - {{id: b, kind: compute, cpu_s: 1}}
      - {{id: c, kind: compute, cpu_s: 1}}
      - {{id: d, kind: compute, cpu_s: 1, join: {join}}}
      - {{id: e, kind: compute, cpu_s: 1}}
    edges:
      - {{from: a, to: b}}
      - {{from: a, to: c}}
      - {{from: b, to: d}}
      - {{from: c, to: d}}
      - {{from: d, to: e}}
"""


@pytest.mark.parametrize(("join", "expected"), [("all", 1.0), ("any", 2.0)])
def test_parallel_fork_join(join: str, expected: float) -> None:
    v = graph(FORK.format(join=join)).visits()
    assert v == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0, "d": expected, "e": expected})


def test_join_all_of_three_parallel_arms_after_branch() -> None:
    g = graph("""
        name: j3
        nodes:
          - {id: pick, kind: branch}
          - {id: fan, kind: compute, cpu_s: 1}
          - {id: skip, kind: compute, cpu_s: 1}
          - {id: p1, kind: compute, cpu_s: 1}
          - {id: p2, kind: compute, cpu_s: 1}
          - {id: p3, kind: compute, cpu_s: 1}
          - {id: j, kind: compute, cpu_s: 1, join: all}
        edges:
          - {from: pick, to: fan, probability: 0.6}
          - {from: pick, to: skip, probability: 0.4}
          - {from: fan, to: p1}
          - {from: fan, to: p2}
          - {from: fan, to: p3}
          - {from: p1, to: j}
          - {from: p2, to: j}
          - {from: p3, to: j}
        """)
    assert g.visits() == pytest.approx(
        {"pick": 1.0, "fan": 0.6, "skip": 0.4, "p1": 0.6, "p2": 0.6, "p3": 0.6, "j": 0.6}
    )


def loop_graph(bound: int, q: float | None = None, join: str = "any") -> AgentGraph:
    """start -> body -> [check (branch: q back, 1-q out) ->] again (loop to body) -> done."""
    if q is None:
        return graph(f"""
            name: loop
            nodes:
              - {{id: start, kind: compute, cpu_s: 1}}
              - {{id: body, kind: compute, cpu_s: 1, join: {join}}}
              - {{id: again, kind: loop, body: body, bound: {bound}}}
              - {{id: done, kind: compute, cpu_s: 1}}
            edges:
              - {{from: start, to: body}}
              - {{from: body, to: again}}
              - {{from: again, to: body}}
              - {{from: again, to: done}}
            """)
    return graph(f"""
        name: loop
        nodes:
          - {{id: start, kind: compute, cpu_s: 1}}
          - {{id: body, kind: compute, cpu_s: 1}}
          - {{id: check, kind: branch}}
          - {{id: again, kind: loop, body: body, bound: {bound}}}
          - {{id: out, kind: compute, cpu_s: 1}}
          - {{id: done, kind: compute, cpu_s: 1}}
        edges:
          - {{from: start, to: body}}
          - {{from: body, to: check}}
          - {{from: check, to: again, probability: {q!r}}}
          - {{from: check, to: out, probability: {1 - q!r}}}
          - {{from: again, to: body}}
          - {{from: again, to: done}}
        """)


@pytest.mark.parametrize("bound", [1, 2, 3, 7, 100])
def test_unconditional_loop_runs_body_bound_plus_one_times(bound: int) -> None:
    g = loop_graph(bound)
    assert g.repeat_shares() == pytest.approx({"again": bound / (bound + 1)})
    v = g.visits()
    assert v == pytest.approx({"start": 1.0, "body": bound + 1, "again": bound + 1, "done": 1.0})


@given(bound=st.integers(1, 60), q100=st.integers(0, 100))
@settings(max_examples=60, deadline=None)
def test_conditional_loop_matches_geometric_sum(bound: int, q100: int) -> None:
    """Each pass returns with chance q and the loop repeats at most `bound` times: the body runs
    q^0 + q^1 + ... + q^bound times; arrivals at the loop past the bound leave for 'done'."""
    q = q100 / 100
    v = loop_graph(bound, q).visits()
    body = sum(q**k for k in range(bound + 1))
    assert v["body"] == pytest.approx(body, rel=1e-9, abs=1e-12)
    assert v["again"] == pytest.approx(q * body, rel=1e-9, abs=1e-12)
    assert v["done"] == pytest.approx(q ** (bound + 1), rel=1e-9, abs=1e-12)
    assert v["out"] == pytest.approx((1 - q) * body, rel=1e-9, abs=1e-12)
    assert v["out"] + v["done"] == pytest.approx(1.0)  # every request leaves exactly once


def test_repeat_share_formula_from_docstring() -> None:
    # q = 0.3, bound 3: S = 1 + 0.3 + 0.09 = 1.39, share = S / (1 + q S) = 1.39 / 1.417
    assert loop_graph(3, 0.3).repeat_shares() == pytest.approx({"again": 1.39 / 1.417})


def test_voice_agent_visits(catalog: Catalog, specs: Path) -> None:
    v = load_agent(specs / "voice.yaml", catalog).graph.visits()
    assert v == pytest.approx(
        {"asr": 1.0, "think": 1.417, "route": 1.417, "search": 0.4251, "again": 0.4251, "speak": 1.0}, abs=1e-9
    )


def test_voice_shaped_graph_without_catalog() -> None:
    g = graph("""
        name: voice
        nodes:
          - {id: asr, kind: compute, cpu_s: 1}
          - {id: think, kind: compute, cpu_s: 1}
          - {id: route, kind: branch}
          - {id: search, kind: tool, protocol: http, endpoint: "http://s"}
          - {id: again, kind: loop, body: think, bound: 3}
          - {id: speak, kind: tts, input_tokens: 10}
        edges:
          - {from: asr, to: think}
          - {from: think, to: route}
          - {from: route, to: search, probability: 0.3}
          - {from: route, to: speak, probability: 0.7}
          - {from: search, to: again}
          - {from: again, to: think}
          - {from: again, to: speak}
        """)
    assert list(g.visits()) == ["asr", "think", "route", "search", "again", "speak"]  # topological
    assert g.visits() == pytest.approx(
        {"asr": 1.0, "think": 1.417, "route": 1.417, "search": 0.4251, "again": 0.4251, "speak": 1.0}, abs=1e-9
    )


def test_nested_unconditional_loops_multiply() -> None:
    g = graph("""
        name: nest
        nodes:
          - {id: a, kind: compute, cpu_s: 1}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: b, kind: compute, cpu_s: 1}
          - {id: il, kind: loop, body: b, bound: 3}
          - {id: ol, kind: loop, body: x, bound: 2}
          - {id: z, kind: compute, cpu_s: 1}
        edges:
          - {from: a, to: x}
          - {from: x, to: b}
          - {from: b, to: il}
          - {from: il, to: b}
          - {from: il, to: ol}
          - {from: ol, to: x}
          - {from: ol, to: z}
        """)
    assert g.visits() == pytest.approx({"a": 1.0, "x": 3.0, "b": 12.0, "il": 12.0, "ol": 3.0, "z": 1.0})


def test_inner_loop_with_early_exit_to_outer_loop() -> None:
    """Inner loop (bound 2) over b: after each pass a branch returns to the inner loop (0.5) or
    leaves straight for the outer loop (0.5). The outer loop always repeats x, twice. Per entry of
    the inner loop b runs 1 + 0.5 + 0.25 = 1.75 times; x runs 3 times, so b runs 5.25 times and the
    inner loop node is reached 3 * (0.5 + 0.25 + 0.125) = 2.625 times (Monte Carlo agrees).

    Flow that leaves the inner loop's body through the outer loop and comes back in through x is a
    new entry, not a return, so it must not count in the inner loop's return ratio."""
    g = graph("""
        name: nest
        nodes:
          - {id: a, kind: compute, cpu_s: 1}
          - {id: x, kind: compute, cpu_s: 1}
          - {id: b, kind: compute, cpu_s: 1}
          - {id: br, kind: branch}
          - {id: il, kind: loop, body: b, bound: 2}
          - {id: ol, kind: loop, body: x, bound: 2}
          - {id: z, kind: compute, cpu_s: 1}
        edges:
          - {from: a, to: x}
          - {from: x, to: b}
          - {from: b, to: br}
          - {from: br, to: il, probability: 0.5}
          - {from: br, to: ol, probability: 0.5}
          - {from: il, to: b}
          - {from: il, to: ol}
          - {from: ol, to: x}
          - {from: ol, to: z}
        """)
    v = g.visits()
    assert v["x"] == pytest.approx(3.0)
    assert v["z"] == pytest.approx(1.0)
    assert v["b"] == pytest.approx(5.25)
    assert v["il"] == pytest.approx(2.625)


def test_join_all_loop_body_runs_once_per_entry_plus_repeats() -> None:
    """A loop body that waits for all its inputs (join: all) has one forward input here; the loop's
    repeat edge is not one more input to wait for. With bound 3 and an unconditional return it runs
    4 times and the request leaves through 'done' exactly once."""
    v = loop_graph(3, join="all").visits()
    assert v == pytest.approx({"start": 1.0, "body": 4.0, "again": 4.0, "done": 1.0})


def test_self_loop_on_loop_node() -> None:
    g = graph("""
        name: spin
        nodes:
          - {id: a, kind: compute, cpu_s: 1}
          - {id: poll, kind: loop, body: poll, bound: 5}
          - {id: z, kind: compute, cpu_s: 1}
        edges:
          - {from: a, to: poll}
          - {from: poll, to: poll}
          - {from: poll, to: z}
        """)
    assert g.visits() == pytest.approx({"a": 1.0, "poll": 6.0, "z": 1.0})


SUB_FORK = """\
  - id: sub
    kind: subagent
    graph:
      nodes:
        - {id: s1, kind: compute, cpu_s: 1}
        - {id: s2, kind: compute, cpu_s: 1}
        - {id: s3, kind: compute, cpu_s: 1}
        - {id: s4, kind: compute, cpu_s: 1}
      edges:
        - {from: s1, to: s2}
        - {from: s1, to: s3}
        - {from: s2, to: s4}
        - {from: s3, to: s4}
"""


def with_sub(head: str, tail: str) -> AgentGraph:
    """A graph with the forking sub-agent 'sub' listed between `head` and `tail` (both indented freely)."""
    return graph(textwrap.dedent(head).lstrip("\n") + SUB_FORK + textwrap.dedent(tail).lstrip("\n"))


def test_subagent_visits_scale_with_parent_visits() -> None:
    g = with_sub("""
        name: p
        nodes:
          - {id: pick, kind: branch}
          - {id: other, kind: compute, cpu_s: 1}
        """, """
        edges:
          - {from: pick, to: sub, probability: 0.25}
          - {from: pick, to: other, probability: 0.75}
        """)
    assert g.visits() == pytest.approx(
        {"pick": 1.0, "sub/s1": 0.25, "sub/s2": 0.25, "sub/s3": 0.25, "sub/s4": 0.5, "other": 0.75}
    )


def test_subagent_in_loop_body_scales_with_repeats() -> None:
    g = with_sub("""
        name: p
        nodes:
          - {id: start, kind: compute, cpu_s: 1}
        """, """
          - {id: again, kind: loop, body: sub, bound: 2}
        edges:
          - {from: start, to: sub}
          - {from: sub, to: again}
          - {from: again, to: sub}
        """)
    assert g.visits() == pytest.approx(
        {"start": 1.0, "sub/s1": 3.0, "sub/s2": 3.0, "sub/s3": 3.0, "sub/s4": 6.0, "again": 3.0}
    )


def test_loop_inside_subagent_scales_with_parent() -> None:
    g = graph("""
        name: p
        nodes:
          - {id: pick, kind: branch}
          - {id: other, kind: compute, cpu_s: 1}
          - id: sub
            kind: subagent
            graph:
              nodes:
                - {id: w, kind: compute, cpu_s: 1}
                - {id: l, kind: loop, body: w, bound: 4}
              edges:
                - {from: w, to: l}
                - {from: l, to: w}
        edges:
          - {from: pick, to: sub, probability: 0.5}
          - {from: pick, to: other, probability: 0.5}
        """)
    assert g.visits() == pytest.approx({"pick": 1.0, "other": 0.5, "sub/w": 2.5, "sub/l": 2.5})


def test_two_entry_nodes_each_run_once() -> None:
    g = graph("""
        name: two
        nodes:
          - {id: a, kind: compute, cpu_s: 1}
          - {id: b, kind: compute, cpu_s: 1}
          - {id: c, kind: compute, cpu_s: 1}
        edges:
          - {from: a, to: c}
          - {from: b, to: c}
        """)
    assert g.visits() == {"a": 1.0, "b": 1.0, "c": 2.0}


# --------------------------------------------------------------------------------------------
# Properties over random acyclic graphs of chains and branches


@st.composite
def random_dags(draw: st.DrawFn) -> dict[str, Any]:
    """Nodes n0..n{k-1} with edges only from lower to higher index; branches get probabilities."""
    k = draw(st.integers(1, 9))
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i in range(k):
        later = list(range(i + 1, k))
        succ = draw(st.lists(st.sampled_from(later), unique=True, max_size=3)) if later else []
        branch = len(succ) >= 2 and draw(st.booleans())
        join = draw(st.sampled_from(["any", "all"]))
        node: dict[str, Any] = {"id": f"n{i}", "kind": "branch" if branch else "compute", "join": join}
        if not branch:
            node["cpu_s"] = 0.01
        nodes.append(node)
        if branch:
            weights = draw(st.lists(st.integers(1, 9), min_size=len(succ), max_size=len(succ)))
            for j, w in zip(succ, weights, strict=True):
                edges.append({"from": f"n{i}", "to": f"n{j}", "probability": w / sum(weights)})
        else:
            edges += [{"from": f"n{i}", "to": f"n{j}"} for j in succ]
    return {"name": "dag", "nodes": nodes, "edges": edges}


def _reference(doc: dict[str, Any]) -> tuple[dict[str, float], dict[str, int], set[str]]:
    """Expected visits and number of entry-to-node paths, by hand in index (= topological) order."""
    kinds = {n["id"]: n["kind"] for n in doc["nodes"]}
    joins = {n["id"]: n["join"] for n in doc["nodes"]}
    into: dict[str, list[dict[str, Any]]] = {n["id"]: [] for n in doc["nodes"]}
    for e in doc["edges"]:
        into[e["to"]].append(e)
    visits: dict[str, float] = {}
    paths: dict[str, int] = {}
    entries = {nid for nid, ins in into.items() if not ins}
    for n in doc["nodes"]:
        nid, ins = n["id"], into[n["id"]]
        if not ins:
            visits[nid], paths[nid] = 1.0, 1
            continue
        flow = sum(visits[e["from"]] * (e["probability"] if kinds[e["from"]] == "branch" else 1.0) for e in ins)
        visits[nid] = flow / len(ins) if joins[nid] == "all" else flow
        paths[nid] = sum(paths[e["from"]] for e in ins)
    return visits, paths, entries


@given(random_dags())
@settings(max_examples=150, deadline=None)
def test_dag_visits_bounded_by_paths(doc: dict[str, Any]) -> None:
    agent = agent_from_text(yaml.safe_dump(doc), EMPTY)
    v = agent.graph.visits()
    expected, paths, entries = _reference(doc)
    assert set(v) == set(paths)
    for nid, x in v.items():
        assert -1e-12 <= x <= paths[nid] + 1e-9, (nid, x, paths[nid])
        assert x == pytest.approx(expected[nid], rel=1e-9, abs=1e-12), nid
    for nid in entries:
        assert v[nid] == 1.0


@st.composite
def branch_trees(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, float]]:
    """A tree whose inner nodes are branches; returns the document and each leaf's path probability."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    leaves: dict[str, float] = {}

    def grow(nid: str, depth: int, p: float) -> None:
        kids = draw(st.integers(2, 3)) if (depth < 4 and draw(st.booleans())) or depth == 0 else 0
        if not kids:
            nodes.append({"id": nid, "kind": "compute", "cpu_s": 1})
            leaves[nid] = p
            return
        nodes.append({"id": nid, "kind": "branch"})
        weights = draw(st.lists(st.integers(1, 20), min_size=kids, max_size=kids))
        for c, w in enumerate(weights):
            child = f"{nid}_{c}"
            edges.append({"from": nid, "to": child, "probability": w / sum(weights)})
            grow(child, depth + 1, p * w / sum(weights))

    grow("root", 0, 1.0)
    return {"name": "tree", "nodes": nodes, "edges": edges}, leaves


@given(branch_trees())
@settings(max_examples=100, deadline=None)
def test_branch_tree_leaves_sum_to_one(case: tuple[dict[str, Any], dict[str, float]]) -> None:
    doc, leaves = case
    v = agent_from_text(yaml.safe_dump(doc), EMPTY).graph.visits()
    assert v["root"] == 1.0
    assert sum(v[leaf] for leaf in leaves) == pytest.approx(1.0, abs=1e-9)
    for leaf, p in leaves.items():
        assert v[leaf] == pytest.approx(p, rel=1e-9)
