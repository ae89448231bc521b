"""Planning with a profile changes estimates only where the profile applies: the profiled device and
op kinds move (and say where their numbers come from), every other candidate is identical; a profile
measured on another machine, or of another model than it names, is not applied and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from profile_synth import TINY, synthetic_profile

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.ir.candidate_pricing import CostModel
from terrazzo.ir.dialects.node_op import NodeOp
from terrazzo.plan.from_ir import build, estimated_module
from terrazzo.plan.planner import plan_graph
from terrazzo.profile.profile_file import write_profile
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload

ROOT = Path(__file__).resolve().parent.parent
AGENT, WORKLOAD = ROOT / "examples/agents/rag-support.yaml", ROOT / "examples/workloads/steady-5rps.yaml"
SLA, CLUSTER = ROOT / "examples/slas/interactive.yaml", ROOT / "examples/clusters/hetero.yaml"
DEVICE = "epyc-9654"
MEASURED_KINDS = {"tz.llm.prefill", "tz.llm.decode", "tz.embed.encode", "tz.ann.search"}  # the profile's op kinds


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "epyc.yaml"
    write_profile(synthetic_profile(DEVICE), path)
    return path


def _candidates(catalog: Catalog) -> dict[tuple[str, int], dict]:
    """Every candidate of every op in the estimated IR of the RAG agent, keyed by (op, position)."""
    cluster, _ = load_cluster(CLUSTER)
    agent = load_agent(AGENT, catalog)
    cm = CostModel(catalog, [catalog.device(d).name for d in cluster.device_types], catalog.tco_profile(
        cluster.tco_profile), cluster.fabric, keep_all=True)
    out = {}
    for op in estimated_module(agent, cm).walk():
        if isinstance(op, NodeOp) and op.candidates:
            for i, c in enumerate(op.candidates):
                out[(f"{op.node_id}:{op.name}", i)] = {k: c.get(k) for k, _, _ in c.FIELDS}
    return out


def test_a_profile_changes_only_the_estimates_it_applies_to(profile_file):
    without = _candidates(load_catalog())
    with_profile = _candidates(load_catalog(profiles=[profile_file]))
    assert without.keys() == with_profile.keys()
    moved = {k for k in without if without[k] != with_profile[k]}
    assert moved, "the profile must change something"
    for key in without:
        before, after = without[key], with_profile[key]
        kind = key[0].split(":", 1)[1]
        if before["device"] != DEVICE or kind not in MEASURED_KINDS:
            assert after == before, key  # other devices and unmeasured op kinds: identical, not from the profile
            assert str(profile_file) not in after["source"], key
            assert after["source"] == "analytic" or after["source"].startswith("fitted:serving_fit.yaml#"), key
        else:
            assert after["source"].startswith(("fitted:", "profile:")), key
            assert after["source"] != before["source"] == "analytic"
    kinds_moved = {k[0].split(":", 1)[1] for k in moved}
    assert kinds_moved == MEASURED_KINDS
    assert all(without[k]["device"] == DEVICE for k in moved)
    # the query embedding (64 tokens of MiniLM) lies inside the profile's grid: measured, not fitted
    embed = [v for k, v in with_profile.items() if k[0].endswith("embed.encode") and v["device"] == DEVICE]
    assert embed and all(v["source"].startswith(f"profile:{profile_file}#embed[") for v in embed)


def test_the_planning_graph_and_plan_say_where_each_estimate_comes_from(profile_file):
    cluster, cat = load_cluster(CLUSTER, [profile_file])
    agent = load_agent(AGENT, cat)
    graph = build(agent, load_workload(WORKLOAD, agent), load_sla(SLA, agent), cluster, cat)
    cluster0, cat0 = load_cluster(CLUSTER)
    graph0 = build(agent, load_workload(WORKLOAD, agent), load_sla(SLA, agent), cluster0, cat0)
    for op, op0 in zip(graph.ops, graph0.ops, strict=True):
        for c, c0 in zip(op.candidates, op0.candidates, strict=True):
            if c.device != DEVICE or c.source == "analytic":
                assert c == c0, (op.name, c.label)
    doc = plan_graph(graph, agent.name).to_json()
    for placed in doc["ops"]:
        op = graph.op(placed["name"])
        chosen = next(c for c in op.candidates if (c.device, c.tp, c.pp, c.batch) == (
            placed["device"], placed["tp"], placed["pp"], placed["batch"]))
        assert placed["source"] == chosen.source
        assert str(profile_file) not in placed["source"] or placed["device"] == DEVICE


def test_a_profile_from_another_machine_is_not_applied(tmp_path):
    xeon = synthetic_profile(DEVICE, identity="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")
    path = tmp_path / "xeon.yaml"
    write_profile(xeon, path)
    cat = load_catalog(profiles=[path])
    assert any("NOT applied" in n and "not a epyc-9654" in n for n in cat.notes)
    assert not cat.profiles and cat.efficiency == load_catalog().efficiency
    assert _candidates(cat) == _candidates(load_catalog())


def test_a_profile_of_another_model_than_it_names_keeps_its_llm_points_to_itself(tmp_path):
    mislabelled = synthetic_profile(DEVICE, llm=TINY.model_copy(update={"name": "llama-3-8b"}))
    path = tmp_path / "mislabelled.yaml"
    write_profile(mislabelled, path)
    cat = load_catalog(profiles=[path])
    assert any("llm points are NOT applied" in n and "llama-3-8b" in n for n in cat.notes)
    assert cat.efficiency_for(DEVICE, "prefill").source.startswith("derived:")  # LLM part not applied
    assert cat.efficiency_for(DEVICE, "embed").source == f"fitted:{path}"  # the rest still is
    assert cat.profiles[-1].llm_model is None
