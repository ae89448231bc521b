"""Decomposition keeps the agent's dependencies and visits: a property over random graphs, plus the op shapes."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.ir.dialects import agent_dialect as A
from terrazzo.ir.dialects import granular_dialect as G
from terrazzo.ir.dialects.node_op import NodeOp
from terrazzo.ir.driver import DECOMPOSE, load_module, make_pass, run_pipeline
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.module_graph import INPUT, OUTPUT, data_edges
from terrazzo.spec.agent import Agent
from terrazzo.spec.builder import AgentBuilder

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog()
NODE_KINDS = {
    "llm": {"kind": "llm", "model": "llama-3-8b", "input_tokens": 256, "output_tokens": 32},
    "llm_aggregated": {"kind": "llm", "model": "llama-3-8b", "input_tokens": 256, "output_tokens": 32,
                       "serving": "aggregated"},
    "moe": {"kind": "llm", "model": "mixtral-8x7b", "input_tokens": 128, "output_tokens": 16},
    "http": {"kind": "tool", "protocol": "http", "endpoint": "https://tool.example/api"},
    "python": {"kind": "tool", "protocol": "python", "function": "pkg.mod:fn"},
    "lookup": {"kind": "memory_lookup", "index_vectors": 10_000, "dimension": 64, "k": 4},
    "load": {"kind": "memory_load"},
    "store": {"kind": "memory_store"},
    "embed": {"kind": "embed", "tokens": 16},
    "stt": {"kind": "stt", "audio_s": 3},
    "tts": {"kind": "tts", "input_tokens": 20},
    "compute": {"kind": "compute", "cpu_s": 0.01},
}


def _dag(draw: st.DrawFn, b: AgentBuilder, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for node_id in ids:
        b.node(node_id, **NODE_KINDS[draw(st.sampled_from(sorted(NODE_KINDS)))])
    for j in range(1, n):
        for i in sorted(draw(st.sets(st.integers(0, j - 1), max_size=2))):
            b.edge(ids[i], ids[j])
    return ids


@st.composite
def agents(draw: st.DrawFn) -> Agent:
    """Random valid agents: a DAG of work nodes, maybe a branch, a bounded loop and an inline sub-agent."""
    b = AgentBuilder("random")
    n = draw(st.integers(2, 6))
    ids = _dag(draw, b, "n", n)
    if n >= 3 and draw(st.booleans()):
        a = draw(st.integers(0, n - 3))
        c1, c2 = sorted(draw(st.sets(st.integers(a + 1, n - 1), min_size=2, max_size=2)))
        p = draw(st.floats(0.05, 0.95))
        b.node("br", "branch").edge(ids[a], "br").edge("br", ids[c1], probability=p).edge("br", ids[c2],
                                                                                         probability=1 - p)
    if draw(st.booleans()):
        body = draw(st.integers(0, n - 1))
        src = draw(st.integers(body, n - 1))
        b.node("lp", "loop", body=ids[body], bound=draw(st.integers(1, 4))).edge(ids[src], "lp").edge("lp", ids[body])
        if src < n - 1 and draw(st.booleans()):
            b.edge("lp", ids[draw(st.integers(src + 1, n - 1))])
    if draw(st.booleans()):
        inner = AgentBuilder("inner")
        _dag(draw, inner, "m", draw(st.integers(1, 3)))
        b.subagent("sub", inner)
        src = draw(st.integers(0, n - 1))
        b.edge(ids[src], "sub")
        if src < n - 1 and draw(st.booleans()):  # only forward, so no cycle skips a loop
            b.edge("sub", ids[draw(st.integers(src + 1, n - 1))])
    return b.build(CATALOG)


def node_of(op_id: str) -> str:
    """The spec node an op comes from: its id up to the decomposition suffix."""
    return op_id if op_id in (INPUT, OUTPUT) else op_id.split(".")[0]


def granular(agent: Agent) -> ModuleOp:
    return run_pipeline(agent_to_module(agent, CATALOG), [make_pass(n) for n in DECOMPOSE])


def reach(edges: list[tuple[str, str]]) -> dict[str, set[str]]:
    succ: dict[str, set[str]] = defaultdict(set)
    for s, d in edges:
        succ[s].add(d)
    out = {}
    for start in list(succ):
        seen, todo = set(), [start]
        while todo:
            for nxt in succ[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        out[start] = seen
    return out


@given(agents())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decomposition_preserves_dependencies(agent: Agent) -> None:
    coarse, fine = agent_to_module(agent, CATALOG), granular(agent)
    agent_edges = data_edges(coarse)
    fine_edges = data_edges(fine)
    # Each agent edge becomes exactly one edge between the ops of its two nodes; nothing else crosses nodes.
    crossing = Counter((node_of(s), node_of(d)) for s, d in fine_edges if node_of(s) != node_of(d))
    assert crossing == Counter(agent_edges)
    # Every agent-level path maps to a granular one from each op of its source to each op of its target.
    ops_of: dict[str, list[str]] = defaultdict(list)
    for op in fine.walk():
        if isinstance(op, NodeOp):
            ops_of[node_of(op.node_id)].append(op.node_id)
    coarse_reach, fine_reach = reach(agent_edges), reach(fine_edges)
    for u, targets in coarse_reach.items():
        for v in targets:
            for x in ops_of.get(u, [u]):
                assert set(ops_of.get(v, [v])) <= fine_reach.get(x, set()) | ({x} if u == v else set())
    for x, targets in fine_reach.items():
        assert {node_of(y) for y in targets} - {node_of(x)} <= coarse_reach.get(node_of(x), set())


@given(agents())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_visits_are_the_specs_and_survive_decomposition(agent: Agent) -> None:
    coarse, fine = agent_to_module(agent, CATALOG), granular(agent)
    expected = agent.graph.visits()
    node_visits = {op.node_id: op.visit_count for op in coarse.walk() if isinstance(op, NodeOp)}
    for path, visits in expected.items():
        assert node_visits[path] == pytest.approx(visits, rel=1e-9, abs=1e-12)
    for op in fine.walk():
        if isinstance(op, NodeOp):
            assert op.visit_count == node_visits[node_of(op.node_id)]


def voice() -> ModuleOp:
    return load_module(str(ROOT / "examples" / "agents" / "voice-agent.yaml"))


def test_llm_call_becomes_prefill_kv_transfer_decode() -> None:
    module = run_pipeline(voice(), [make_pass("decompose-llm")])
    ops = {op.node_id: op for op in module.walk() if isinstance(op, NodeOp)}
    assert "think" not in ops
    prefill, kv, decode = ops["think.prefill"], ops["think.kv"], ops["think.decode"]
    assert isinstance(prefill, G.PrefillOp) and isinstance(kv, G.KvTransferOp) and isinstance(decode, G.DecodeOp)
    assert kv.operands[0] is prefill.out and decode.operands[0] is kv.out
    per_token = kv_bytes_per_token(CATALOG.model("llama-3-70b"), "fp16")
    assert kv.properties["bytes"].value.data == per_token * 512  # type: ignore[attr-defined]
    assert [o.node_id for o in (u.operation for u in decode.out.uses)] == ["route"]


def test_aggregated_calls_stay_whole_and_moe_phases_split() -> None:
    module = load_module(str(ROOT / "examples" / "agents" / "moe-agent.yaml"))
    run_pipeline(module, [make_pass(n) for n in DECOMPOSE])
    ops = {op.node_id: op for op in module.walk() if isinstance(op, NodeOp)}
    assert isinstance(ops["research/summarise"], A.LlmCallOp)
    chain = ["write.prefill.gate", "write.prefill", "write.prefill.merge", "write.prefill.allreduce", "write.kv",
             "write.decode.gate", "write.decode", "write.decode.merge", "write.decode.allreduce"]
    for a, b in itertools.pairwise(chain):
        assert ops[b].operands[0].owner is ops[a]
    assert isinstance(ops["write.decode"], G.MoeExpertOp) and ops["write.decode"].phase.data == "decode"
    assert ops["write.prefill.gate"].anchor.data == "write.prefill"  # type: ignore[attr-defined]
    assert isinstance(ops["research/lookup.embed"], G.EmbedEncodeOp)
    assert isinstance(ops["research/lookup.search"], G.AnnSearchOp)
    assert isinstance(ops["research/query"], G.EmbedEncodeOp)


def test_tools_split_into_lookup_and_compute() -> None:
    module = run_pipeline(voice(), [make_pass("decompose-tools")])
    ops = {op.node_id: op for op in module.walk() if isinstance(op, NodeOp)}
    lookup, compute = ops["search.lookup"], ops["search.compute"]
    assert isinstance(lookup, G.ToolLookupOp) and isinstance(compute, G.ToolComputeOp)
    assert compute.operands[0] is lookup.out
    assert compute.bytes_in == [512.0]
    assert isinstance(ops["think"], A.LlmCallOp)  # the other passes did not run
