"""Importers: Hugging Face configs against published parameter counts, and LangGraph graphs planned
and simulated end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import terrazzo as tz
from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.errors import CatalogError, SpecError
from terrazzo.importers.hf_config import import_hf
from terrazzo.importers.langgraph_import import import_langgraph

ROOT = Path(__file__).resolve().parent.parent
HF = ROOT / "tests" / "data" / "hf"
PUBLISHED = yaml.safe_load((HF / "published.yaml").read_text())
GRAPHS = "tests/langgraph_graphs.py"
CLUSTER = ROOT / "examples" / "clusters" / "hetero.yaml"
SLA = ROOT / "examples" / "slas" / "interactive.yaml"
SHAPE = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "experts", "active_experts",
         "shared_experts", "expert_ffn", "dense_layers", "mla")


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "terrazzo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "100"})


def test_at_least_five_families_ship() -> None:
    families = {json.loads((HF / n / "config.json").read_text())["model_type"] for n in PUBLISHED}
    assert len(PUBLISHED) >= 5 and len(families) >= 5, families


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hf_parameter_counts_match_published(name: str) -> None:
    facts = PUBLISHED[name]
    model = import_hf(HF / name)
    assert model.total_params / 1e9 == pytest.approx(facts["total"], rel=0.02), facts["source"]
    if "active" in facts:
        active = model.active_params
        if not facts["active_counts_embedding"]:
            active -= model.spec.vocab * model.spec.hidden
        assert active / 1e9 == pytest.approx(facts["active"], rel=0.03), facts["source"]
        assert model.spec.active_params_b is not None and model.spec.is_moe
    else:
        assert not model.spec.is_moe and model.active_params == model.total_params
    assert model.spec.params_b.source.startswith("derived:")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hf_shapes_agree_with_the_shipped_catalog(name: str) -> None:
    """The catalog's hand-written entry and the importer read the same config the same way."""
    imported = import_hf(HF / name).spec
    entry = load_catalog().model(PUBLISHED[name]["catalog"])
    assert {f: getattr(imported, f) for f in SHAPE} == {f: getattr(entry, f) for f in SHAPE}
    assert imported.total_params == pytest.approx(entry.total_params, rel=0.02)


def test_hf_family_details() -> None:
    gemma = import_hf(HF / "gemma-2-9b-it" / "config.json").spec
    assert gemma.head_dim == 256 != gemma.hidden // gemma.heads  # explicit head_dim wins
    ds = import_hf(HF / "deepseek-v3").spec
    assert ds.mla is not None and ds.mla.kv_lora_rank == 512 and ds.dense_layers == 3 and ds.shared_experts == 1
    assert ds.head_dim == 128  # v_head_dim, as the catalog's MLA entries keep it


def test_hf_cli_writes_a_catalog_the_cost_model_uses(tmp_path: Path) -> None:
    out = tmp_path / "qwen3.yaml"
    url = "https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json"
    done = _cli("import", "hf", str(HF / "qwen3-30b-a3b"), "--name", "my-qwen3", "--source", url, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "30.53B parameters, 3.35B active" in done.stdout
    assert _cli("hw", "validate", str(out)).returncode == 0
    cost = _cli("cost", "my-qwen3", "--device", "h100", "--dtype", "fp8", "--tbt", "0.05", "--catalog", str(out),
                "--json")
    assert cost.returncode == 0, cost.stderr
    assert json.loads(cost.stdout)["model"] == "my-qwen3"
    entry = yaml.safe_load(out.read_text())["models"]["my-qwen3"]
    assert entry["shape_source"] == url and url in entry["params_b"]["source"]


def test_hf_errors_name_the_file_and_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 6}))
    with pytest.raises(CatalogError, match="model_type 't5' is not a supported family"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    done = _cli("import", "hf", str(tmp_path))
    assert done.returncode == 2 and "config.json:1: not valid JSON" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- LangGraph

def _nodes(doc: dict, kind: str) -> list[dict]:
    return [n for n in doc["nodes"] if n["kind"] == kind]


def test_react_graph_maps_its_tool_loop() -> None:
    done = import_langgraph(f"{GRAPHS}:react")
    doc = done.document
    (llm,) = _nodes(doc, "llm")
    assert llm["model"] == "qwen2.5-7b" and llm["input_tokens"] == 1024  # model id looked up; metadata kept
    (tool,) = _nodes(doc, "tool")
    assert tool["function"] == f"{GRAPHS}:order_status" and tool["latency_s"] == 0.2
    (loop,) = _nodes(doc, "loop")
    assert loop["body"] == "agent" and loop["bound"] == 5
    probs = {e["to"]: e["probability"] for e in doc["edges"] if "probability" in e}
    assert probs == {"tools": 0.6, "end": 0.4}
    assert any("2 tools" in line for line in done.report)
    # visits: the agent runs once, then again after each tool call, up to the bound
    visits = done.agent.graph.visits()
    assert visits["agent"] == pytest.approx(sum(0.6**k for k in range(6)), rel=1e-6)


def test_router_and_subgraph_map() -> None:
    router = import_langgraph(f"{GRAPHS}:router").document
    probs = {e["to"]: e["probability"] for e in router["edges"] if "probability" in e}
    assert probs == {"billing": 0.3, "technical": 0.5, "faq": 0.2}
    models = {n["id"]: n["model"] for n in _nodes(router, "llm")}
    assert models == {"triage": "llama-3-8b", "billing": "qwen2.5-72b", "technical": "qwen2.5-72b"}
    writer = import_langgraph(f"{GRAPHS}:writer")
    (sub,) = _nodes(writer.document, "subagent")
    inner = {n["id"]: n["kind"] for n in sub["graph"]["nodes"]}
    assert inner == {"gather": "tool", "summarise": "llm"}
    assert {p for p, _ in writer.agent.graph.leaves()} >= {"research/gather", "research/summarise", "write"}
    assert any(line.startswith("research/summarise: token counts") for line in writer.report)


@pytest.mark.parametrize("graph", ["react", "router", "writer"])
def test_imported_graphs_plan_and_simulate(graph: str) -> None:
    done = import_langgraph(f"{GRAPHS}:{graph}")
    plan = tz.plan_agent(done.agent, CLUSTER, workload={"arrival": {"rate_per_s": 2}}, sla=SLA, verify=False)
    frame = plan.to_pandas()
    llm_nodes = {p for p, n in done.agent.graph.leaves() if n.kind == "llm"}
    assert llm_nodes <= set(frame["node"]) and plan.tco_usd_h > 0
    sim = tz.simulate(plan, duration_s=120, seed=1)
    assert sim.report.completed > 100
    # the simulator samples the imported branches and loops: visits per request to each pool match the
    # graph's expectation summed over the ops the pool serves (pools are shared by ops of one device)
    expected = done.agent.graph.visits()
    doc = plan.to_json()
    node_of = {o["name"]: o["node"] for o in doc["ops"]}
    members = {q["name"]: q["ops"] for q in doc["pools"]}
    for pool in sim.report.pools:
        want = sum(expected[node_of[m["op"]]] * m["share"] for m in members[pool.op])
        assert pool.visits_per_request == pytest.approx(want, rel=0.15), pool.op


def test_cli_import_then_plan(tmp_path: Path) -> None:
    out = tmp_path / "react.yaml"
    done = _cli("import", "langgraph", f"{GRAPHS}:react", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "assumed: tools: ToolNode with 2 tools" in done.stderr
    planned = _cli("plan", str(out), "--workload", "examples/workloads/steady-5rps.yaml", "--sla", str(SLA),
                   "--cluster", str(CLUSTER), "--no-verify", "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["agent"] == "react"
    bad = _cli("import", "langgraph", "tests/langgraph_graphs.py:nope")
    assert bad.returncode == 2 and "has no attribute 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_react_graph_is_a_working_langgraph_graph() -> None:
    """The graph the importer reads is real: LangGraph runs it through one tool call to the answer."""
    sys.path.insert(0, str(ROOT))
    try:
        from tests.langgraph_graphs import build_react
    finally:
        sys.path.remove(str(ROOT))
    out = build_react().compile().invoke({"messages": [("user", "where is order 1234?")]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert out["messages"][-1].content == "Your order 1234 has shipped."


def test_not_a_graph() -> None:
    with pytest.raises(SpecError, match="expected a LangGraph StateGraph"):
        import_langgraph(object())
