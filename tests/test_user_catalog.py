"""A model that only a cluster's own catalog defines plans, simulates and compiles under every serving mode.

The passes used to read the shipped catalog through a path-keyed cache, so a user catalog reached the
cost pass but not the decompositions; the catalog is now one object in the pass context.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terrazzo.ir.driver import compile_path
from terrazzo.sim.results import simulate
from terrazzo.sim.sim_inputs import model_from_plan
from terrazzo.sim.simulation import SimConfig
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.replan import verified_plan

ROOT = Path(__file__).parent.parent
MODELS = """models:
  my-llm:
    name: my-llm
    kind: llm
    family: llama-3
    layers: 16
    hidden: 2048
    heads: 32
    kv_heads: 8
    head_dim: 64
    ffn: 8192
    vocab: 128256
    max_context: 8192
    params_b: {value: 1.24, source: "https://huggingface.co/meta-llama/Llama-3.2-1B"}
    shape_source: https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
"""
CLUSTER = """name: mine
devices: [a100-80gb, h100-sxm]
catalogs: [my-models.yaml]
"""
AGENT = """name: mine
nodes:
  - {{id: think, kind: llm, model: my-llm, dtype: bf16, input_tokens: 512, output_tokens: 64, serving: {serving}}}
edges: []
"""


@pytest.mark.parametrize("serving", ["aggregated", "disaggregated", "auto"])
def test_a_user_catalog_model_plans_simulates_and_compiles(tmp_path: Path, serving: str) -> None:
    (tmp_path / "my-models.yaml").write_text(MODELS)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "agent.yaml").write_text(AGENT.format(serving=serving))
    inputs = {"agent": tmp_path / "agent.yaml", "workload": ROOT / "examples/workloads/steady-5rps.yaml",
              "sla": ROOT / "examples/slas/interactive.yaml", "cluster": tmp_path / "cluster.yaml"}
    cluster, catalog = load_cluster(inputs["cluster"])
    agent = load_agent(inputs["agent"], catalog)
    result = verified_plan(agent, load_workload(inputs["workload"], agent), load_sla(inputs["sla"], agent),
                           cluster, catalog, verify=False)
    names = {p.name for p in result.ops}
    assert names == ({"think"} if serving == "aggregated" else names)
    if serving == "disaggregated":
        assert {"think.prefill", "think.decode"} <= names
    doc = result.to_json()
    doc["inputs"] = {k: str(v) for k, v in inputs.items()}
    report = simulate(model_from_plan(doc), SimConfig(duration_s=60, seed=1))
    assert report.completed > 0 and report.unfinished == 0

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc))
    text = compile_path(str(inputs["agent"]), emit="partitioned", cluster=str(inputs["cluster"]), plan=str(plan_file))
    assert "my-llm" in text and "tz.pool" in text
