"""Passes: idempotent, partition's transfers exactly on cross-pool edges, placement checks, driver errors."""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp

from terrazzo.errors import IRError
from terrazzo.ir.context import parse_module, print_module
from terrazzo.ir.dialects import agent_dialect as A
from terrazzo.ir.dialects import granular_dialect as G
from terrazzo.ir.dialects.node_op import NodeOp
from terrazzo.ir.driver import DECOMPOSE, STAGES, compile_path, load_module, make_pass, pass_context, run_pipeline
from terrazzo.ir.module_graph import INPUT, OUTPUT, data_edges, placeable_ops
from terrazzo.ir.passes import PASSES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CLUSTER = str(EXAMPLES / "clusters" / "hetero.yaml")
AGENTS = ["voice-agent", "rag-support", "langchain-agent", "moe-agent"]


def agent_path(name: str) -> str:
    return str(EXAMPLES / "agents" / f"{name}.yaml")


def plan_path(name: str) -> str:
    return str(EXAMPLES / "plans" / f"{name}.json")


@pytest.fixture(scope="module")
def granular_text() -> dict[str, str]:
    return {name: compile_path(agent_path(name), emit="granular") for name in AGENTS}


@pytest.fixture(scope="module")
def estimated_text() -> dict[str, str]:
    return {name: compile_path(agent_path(name), emit="estimated", cluster=CLUSTER) for name in ("voice-agent",
                                                                                                "moe-agent")}


def run(text: str, *names: str, plan: str | None = None) -> ModuleOp:
    return run_pipeline(parse_module(text), [make_pass(n) for n in names], pass_context(CLUSTER, plan))


def write_plan(placements: dict[str, dict]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"schema": "terrazzo.placement/v1", "placements": placements}, f)
    return f.name


CHANGES = {  # which examples each decomposition rewrites when run alone on the agent stage
    "decompose-llm": AGENTS, "decompose-moe": [], "decompose-tools": ["voice-agent", "rag-support", "langchain-agent"],
    "decompose-memory": ["rag-support", "langchain-agent", "moe-agent"], "verify-placement": [],
    "decompose-kv": [],  # none of these four names a prefix (tests/test_ir_kv.py covers the ones that do)
}


# Idempotence -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", AGENTS)
@pytest.mark.parametrize("pass_name", [*DECOMPOSE, "apply-plan", "verify-placement", "partition"])
def test_every_pass_is_idempotent(granular_text: dict[str, str], name: str, pass_name: str) -> None:
    if pass_name in DECOMPOSE:
        start = compile_path(agent_path(name), emit="agent")
    elif pass_name == "apply-plan":
        start = granular_text[name]
    else:
        start = print_module(run(granular_text[name], "apply-plan", plan=plan_path(name)))
    once = print_module(run(start, pass_name, plan=plan_path(name)))
    twice = print_module(run(once, pass_name, plan=plan_path(name)))
    assert once == twice
    assert (once != start) == (name in CHANGES.get(pass_name, AGENTS))  # it did its work the first time


@pytest.mark.parametrize("name", ["voice-agent", "moe-agent"])
def test_estimate_cost_is_idempotent(estimated_text: dict[str, str], name: str) -> None:
    assert print_module(run(estimated_text[name], "estimate-cost")) == estimated_text[name]


def test_passes_are_registered_under_their_names() -> None:
    assert set(PASSES) == {*DECOMPOSE, "estimate-cost", "apply-plan", "partition", "verify-placement"}
    for stage, names in STAGES.items():
        assert all(n in PASSES for n in names), stage


# Estimation ---------------------------------------------------------------------------------------------------

def test_estimates_cover_placeable_ops_and_keep_reasons(estimated_text: dict[str, str]) -> None:
    module = parse_module(estimated_text["voice-agent"])
    ops = {op.node_id: op for op in placeable_ops(module)}
    assert set(ops) == {"asr", "think.prefill", "think.decode", "search.lookup", "search.compute", "speak"}
    for op in ops.values():
        devices = {c.device.data for c in op.candidates}
        assert devices == {"h100-sxm", "b200", "gaudi3", "mi300x", "a100-80gb-sxm", "a40", "epyc-9654"}
    lookup = {c.device.data: c for c in ops["search.lookup"].candidates}
    assert lookup["epyc-9654"].feasible and not lookup["h100-sxm"].feasible
    assert "CPU" in lookup["h100-sxm"].infeasible.data
    decode = [c for c in ops["think.decode"].candidates if c.feasible]
    assert decode and all(c.span_s.data == pytest.approx(c.latency_s.data * 256) for c in decode)
    a40 = [c for c in ops["think.decode"].candidates if c.device.data == "a40"]
    assert all("GB" in c.infeasible.data for c in a40 if not c.feasible) or all(c.tp.data * c.pp.data > 1 for c in a40)
    for op in module.walk():
        if isinstance(op, A.BranchOp | A.LoopOp | G.KvTransferOp):
            assert not isinstance(op, NodeOp) or not op.candidates


def test_sla_limits_filter_llm_candidates(tmp_path: Path) -> None:
    sla = tmp_path / "sla.yaml"
    sla.write_text("mode: interactive\nllm_default: {ttft_s: 50 ms, tbt_s: 10 ms}\n")
    text = compile_path(agent_path("voice-agent"), pipeline=[*DECOMPOSE, "estimate-cost"], cluster=CLUSTER,
                        sla=str(sla))
    ops = {op.node_id: op for op in placeable_ops(parse_module(text))}
    for c in ops["think.decode"].candidates:
        assert not c.feasible or c.latency_s.data <= 0.010
    assert any("TBT" in c.infeasible.data for c in ops["think.decode"].candidates)


# Partition ----------------------------------------------------------------------------------------------------

def pool_of(module: ModuleOp) -> dict[str, str]:
    return {op.node_id: pool.pool.data for pool in module.walk() if isinstance(pool, G.PoolOp)
            for op in pool.body.block.ops if isinstance(op, NodeOp)}


def check_partition(placed: ModuleOp, parted: ModuleOp) -> None:
    """Exactly one transfer on every edge whose ends sit in different pools, none elsewhere."""
    pools = pool_of(parted)
    graph = next(op for op in parted.ops if isinstance(op, A.GraphOp))
    top = list(graph.body.block.ops)
    transfers = [op for op in top if isinstance(op, G.TransferOp | G.KvTransferOp)]
    assert all(isinstance(op, A.InputOp | A.OutputOp | G.PoolOp | G.TransferOp | G.KvTransferOp) for op in top)
    assert not any(isinstance(op, G.TransferOp | G.KvTransferOp) for pool in top if isinstance(pool, G.PoolOp)
                   for op in pool.body.block.ops)
    edges = data_edges(parted, through_transfers=True)
    cross = [(s, d) for s, d in edges if s not in (INPUT,) and d != OUTPUT and pools[s] != pools[d]]
    assert len(transfers) == len(cross)
    for t in transfers:
        src, dst = t.properties["src"].data, t.properties["dst"].data  # type: ignore[attr-defined]
        assert src != dst
        assert isinstance(t.operands[0].owner, G.PoolOp) and t.operands[0].owner.pool.data == src
        users = [u.operation for u in t.results[0].uses]
        assert len(users) == 1 and isinstance(users[0], G.PoolOp) and users[0].pool.data == dst
        assert t.properties["link"].data in ("scale-out", "host")  # type: ignore[attr-defined]
    for pool in (op for op in top if isinstance(op, G.PoolOp)):
        assert all(isinstance(v.owner, A.InputOp | G.TransferOp | G.KvTransferOp) for v in pool.inputs)
    # Moving ops into pools kept every dependency (a sub-agent's edges are those of its inlined ops).
    if not any(isinstance(op, A.SubagentOp) for op in placed.walk()):
        assert Counter(edges) == Counter(data_edges(placed, through_transfers=True))


@pytest.mark.parametrize("name", AGENTS)
def test_partition_of_the_example_plans(granular_text: dict[str, str], name: str) -> None:
    placed = run(granular_text[name], "apply-plan", plan=plan_path(name))
    check_partition(placed, run(print_module(placed), "partition"))


POOLS = {"cpu": "epyc-9654", "gpu-a": "h100-sxm", "gpu-b": "b200", "gpu-c": "h100-sxm"}


@given(data=st.data(), name=st.sampled_from(AGENTS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_partition_puts_one_transfer_on_each_cross_pool_edge(granular_text: dict[str, str], data: st.DataObject,
                                                             name: str) -> None:
    ids = [op.node_id for op in placeable_ops(parse_module(granular_text[name]))]
    choice = {i: data.draw(st.sampled_from(sorted(POOLS)), label=i) for i in ids}
    plan = write_plan({i: {"device": POOLS[p], "pool": p} for i, p in choice.items()})
    placed = run(granular_text[name], "apply-plan", plan=plan)
    parted = run(print_module(placed), "partition")
    check_partition(placed, parted)
    kv = [op for op in parted.walk() if isinstance(op, G.KvTransferOp)]
    phases = {i.rsplit(".", 1)[0] for i in ids if i.endswith(".decode")}
    assert len(kv) == sum(choice[f"{n}.prefill"] != choice[f"{n}.decode"] for n in phases)
    assert parse_module(print_module(parted))  # the partitioned module reads back


def test_colocated_prefill_and_decode_keep_their_cache(granular_text: dict[str, str]) -> None:
    plan = json.loads(Path(plan_path("voice-agent")).read_text())["placements"]
    plan["think.decode"] = {**plan["think.prefill"]}
    parted = run(granular_text["voice-agent"], "apply-plan", "partition", plan=write_plan(plan))
    assert not [op for op in parted.walk() if isinstance(op, G.KvTransferOp)]
    decode = next(op for op in parted.walk() if isinstance(op, G.DecodeOp))
    assert isinstance(decode.operands[0].owner, G.PrefillOp)


# Placement checks ---------------------------------------------------------------------------------------------

def test_verify_placement_names_an_unplaced_op(granular_text: dict[str, str]) -> None:
    plan = json.loads(Path(plan_path("voice-agent")).read_text())["placements"]
    del plan["speak"]
    with pytest.raises(IRError, match=re.escape("speak (agent.tts) is not placed; give it an entry in the plan")):
        run(granular_text["voice-agent"], "apply-plan", "verify-placement", plan=write_plan(plan))


def test_verify_placement_catches_an_over_capacity_placement(granular_text: dict[str, str]) -> None:
    plan = json.loads(Path(plan_path("voice-agent")).read_text())["placements"]
    plan["think.decode"] = {"device": "a40", "tp": 1, "pp": 1, "batch": 8, "pool": "decode-a40"}
    with pytest.raises(IRError) as err:
        run(granular_text["voice-agent"], "apply-plan", "verify-placement", plan=write_plan(plan))
    message = str(err.value)
    assert "think.decode: llama-3-70b fp16 on a40 with tp=1 pp=1 batch=8 needs" in message
    assert "GB is usable; raise tp or pp" in message


def test_verify_placement_catches_wrong_device_kinds_and_mixed_pools(granular_text: dict[str, str]) -> None:
    plan = json.loads(Path(plan_path("voice-agent")).read_text())["placements"]
    plan["search.lookup"] = {"device": "h100", "pool": "gpu"}
    plan["speak"] = {"device": "b200", "pool": "gpu"}
    with pytest.raises(IRError) as err:
        run(granular_text["voice-agent"], "apply-plan", "verify-placement", plan=write_plan(plan))
    assert "search.lookup: host code: needs a CPU device" in str(err.value)
    assert "pool 'gpu' already runs on h100-sxm" in str(err.value)


def test_the_example_plans_pass_verification(granular_text: dict[str, str]) -> None:
    for name in AGENTS:
        run(granular_text[name], "apply-plan", "verify-placement", plan=plan_path(name))


def test_apply_plan_sets_moe_tensor_parallelism(granular_text: dict[str, str]) -> None:
    module = run(granular_text["moe-agent"], "apply-plan", plan=plan_path("moe-agent"))
    plan = json.loads(Path(plan_path("moe-agent")).read_text())["placements"]
    ops = {op.node_id: op for op in module.walk() if isinstance(op, NodeOp)}
    assert ops["plan.decode"].properties["tp"].value.data == plan["plan.decode"]["tp"]  # type: ignore[attr-defined]
    assert ops["plan.decode.allreduce"].properties["group"].value.data == plan["plan.decode"]["tp"]  # type: ignore[attr-defined]


def test_apply_plan_rejects_bad_plans(granular_text: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(IRError, match=re.escape("places 'thinking.prefill', which this module does not have")):
        run(granular_text["voice-agent"], "apply-plan", plan=write_plan({"thinking.prefill": {"device": "h100"}}))
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"schema": "terrazzo.placement/v0", "placements": {}}))
    with pytest.raises(IRError, match=re.escape("this terrazzo reads 'terrazzo.placement/v1'")):
        run(granular_text["voice-agent"], "apply-plan", plan=str(bad))
    with pytest.raises(IRError, match=re.escape("placements.asr.tp")):
        run(granular_text["voice-agent"], "apply-plan", plan=write_plan({"asr": {"device": "a40", "tp": 0}}))
    with pytest.raises(IRError, match=re.escape("apply-plan needs a placement file")):
        compile_path(agent_path("voice-agent"), emit="placed")


def test_partition_refuses_unplaced_ops(granular_text: dict[str, str]) -> None:
    with pytest.raises(IRError, match=re.escape("partition needs every op placed; unplaced: asr")):
        run(granular_text["voice-agent"], "partition")


# Driver -------------------------------------------------------------------------------------------------------

def test_driver_errors_are_ir_errors(tmp_path: Path) -> None:
    with pytest.raises(IRError, match=re.escape("unknown --emit 'llvm'; stages are agent, granular")):
        compile_path(agent_path("voice-agent"), emit="llvm")
    with pytest.raises(IRError, match=re.escape("unknown pass 'inline'")):
        compile_path(agent_path("voice-agent"), pipeline=["inline"])
    with pytest.raises(IRError, match=re.escape("cannot read")):
        compile_path(str(tmp_path / "missing.mlir"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  - {id: a, kind: llm, model: gpt-9, input_tokens: 1, output_tokens: 1}\n")
    with pytest.raises(IRError, match=re.escape("gpt-9")):
        compile_path(str(bad))
    broken = tmp_path / "broken.mlir"
    broken.write_text("builtin.module {\n  agent.graph @g {\n    %input = agent.input\n    agent.output\n  }\n}\n")
    assert "agent.graph @g" in compile_path(str(broken), pipeline=[])
    broken.write_text("builtin.module {\n  agent.graph @g {\n    agent.output\n  }\n}\n")
    with pytest.raises(IRError, match=re.escape("needs exactly one agent.input")):
        compile_path(str(broken))


def test_pipeline_runs_passes_alone_and_with_options() -> None:
    text = compile_path(agent_path("moe-agent"), pipeline=["decompose-llm", "decompose-moe{tp=2}"])
    module = parse_module(text)
    experts = [op for op in module.walk() if isinstance(op, G.MoeExpertOp)]
    assert experts and all(op.properties["tp"].value.data == 2 for op in experts)  # type: ignore[attr-defined]
    assert any(isinstance(op, A.MemoryLookupOp) for op in module.walk())  # decompose-memory did not run
    assert load_module(agent_path("moe-agent")).ops.first is not None


def test_coarse_keys_from_a_planner_result_place_every_derived_op(granular_text: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """The planner may place whole nodes (`search`) and aggregated LLM calls (`think.aggregated`)."""
    placement = {"asr": {"device": "a40", "pool": "a40"},
                 "think.aggregated": {"device": "b200", "tp": 2, "batch": 57, "pool": "b200-tp2"},
                 "search": {"device": "epyc-9654", "pool": "cpu"}, "speak": {"device": "epyc-9654", "pool": "cpu"},
                 "search.compute": {"device": "xeon-8592", "pool": "cpu-2"}}
    path = tmp_path / "voice.plan.json"
    path.write_text(json.dumps({"schema": "terrazzo.plan/v1", "agent": "voice-agent", "ops": [],
                                "placement": {"schema": "terrazzo.placement/v1", "placements": placement}}))
    placed = run(granular_text["voice-agent"], "apply-plan", "verify-placement", plan=str(path))
    where = {op.node_id: op.placement for op in placeable_ops(placed)}
    assert where["think.prefill"].pool.data == where["think.decode"].pool.data == "b200-tp2"  # type: ignore[union-attr]
    assert where["think.prefill"].batch.data == 1 and where["think.decode"].batch.data == 57  # type: ignore[union-attr]
    assert where["search.lookup"].pool.data == "cpu" and where["search.compute"].pool.data == "cpu-2"  # type: ignore[union-attr]
    parted = run(print_module(placed), "partition")
    check_partition(placed, parted)
    assert not [op for op in parted.walk() if isinstance(op, G.KvTransferOp)]


def test_verify_placement_keeps_disaggregated_calls_apart(granular_text: dict[str, str]) -> None:
    plan = json.loads(Path(plan_path("moe-agent")).read_text())["placements"]
    plan["write.decode"] = dict(plan["write.prefill"])
    with pytest.raises(IRError, match=re.escape("write.decode: the spec says serving: disaggregated")):
        run(granular_text["moe-agent"], "apply-plan", "verify-placement", plan=write_plan(plan))
