"""One fleet: on every example plan, the planner's TCO, the independent checker's, the simulator's $/h
and the devices `deploy` writes per type all come from the same pools and agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.deploy.write import deploy
from terrazzo.errors import PlanRejected
from terrazzo.plan.recheck import recheck_file
from terrazzo.sim.sim_inputs import load_model

ROOT = Path(__file__).resolve().parent.parent
PLANS = sorted([*ROOT.glob("examples/plans/*.plan.json"), *ROOT.glob("examples/runtime/*.plan.json")])


@pytest.mark.parametrize("path", PLANS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_planner_checker_simulator_and_deploy_price_one_fleet(path, tmp_path):
    doc = json.loads(path.read_text())
    assert doc["schema"] == "terrazzo.plan/v2"
    planned_usd, planned_devices = doc["tco_usd_h"], doc["devices"]
    pools_usd = sum(p["usd_h"] for p in doc["pools"])
    assert planned_usd == pytest.approx(pools_usd, rel=1e-9)
    checked = recheck_file(path)  # rebuilds the graph from the plan's inputs and runs plan/check.py
    assert checked.usd_h == pytest.approx(planned_usd, rel=1e-9)
    assert checked.devices == planned_devices
    sim = load_model(path)
    assert sim.usd_h == pytest.approx(planned_usd, rel=1e-9)
    written = deploy(path, "kuberay", tmp_path)
    deployed = {g.device: g.devices for g in written.fleet.groups}
    assert deployed == planned_devices
    cluster = list(yaml.safe_load_all(written.files[0].read_text()))[1]
    nodes = {g["groupName"]: g["replicas"] for g in cluster["spec"]["workerGroupSpecs"]}
    assert {g.name: g.nodes for g in written.fleet.groups} == nodes


def test_a_split_op_is_deployed_and_simulated_on_both_device_types():
    path = ROOT / "examples/plans/voice-agent-owned.plan.json"
    doc = json.loads(path.read_text())
    asr = [p for p in doc["pools"] if any(m["op"] == "asr" for m in p["ops"])]
    assert {p["device"] for p in asr} == {"a100-80gb-sxm", "a40"}
    assert sum(m["share"] for p in asr for m in p["ops"] if m["op"] == "asr") == pytest.approx(1.0)
    assert doc["devices"]["a100-80gb-sxm"] <= 20 and doc["devices"]["a40"] <= 40  # the owned inventory
    model = load_model(path)
    assert [p.pool for p in model.placements["asr"]] == sorted((p["name"] for p in asr),
                                                               key=lambda n: -next(m["share"] for p in asr if
                                                                                   p["name"] == n for m in p["ops"]))


def test_a_hand_edited_plan_is_refused_naming_the_binding_constraint(tmp_path):
    doc = json.loads((ROOT / "examples/plans/voice-agent-owned.plan.json").read_text())
    asr = next(p for p in doc["pools"] if p["device"] == "a40" and any(m["op"] == "asr" for m in p["ops"]))
    asr["replicas"] = 5  # far below its share of 200 req/s of speech
    doc["inputs"] = {k: str(ROOT / v) for k, v in doc["inputs"].items()}
    path = tmp_path / "edited.plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanRejected, match=rf"pool {asr['name']}: 5 replicas carry less than its load"):
        recheck_file(path)
    with pytest.raises(PlanRejected):
        deploy(path, "kuberay", tmp_path / "out")


def test_a_70b_fp16_decode_on_an_l4_is_refused_by_every_consumer(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("devices: [l4, b200, epyc-9654]\ntco_profile: paper-2507.19635\n")
    agent = tmp_path / "agent.yaml"
    agent.write_text("name: big\nnodes:\n  - {id: think, kind: llm, model: llama-3-70b, dtype: fp16, "
                     "input_tokens: 512, output_tokens: 128, serving: disaggregated}\nedges: []\n")
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
    from terrazzo.verify.replan import verified_plan

    cl, cat = load_cluster(cluster)
    ag = load_agent(agent, cat)
    wl = ROOT / "examples/workloads/steady-5rps.yaml"
    sla = ROOT / "examples/slas/interactive.yaml"
    plan = verified_plan(ag, load_workload(wl, ag), load_sla(sla, ag), cl, cat, verify=False)
    doc = plan.to_json()
    doc["inputs"] = {"agent": str(agent), "workload": str(wl), "sla": str(sla), "cluster": str(cluster)}
    dec = next(p for p in doc["pools"] if p["role"] == "decode")
    dec.update(device="l4", tp=1, pp=1, name="think.decode@l4-tp1-pp1-b1", batch=1)
    path = tmp_path / "l4.plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanRejected) as err:
        recheck_file(path)
    assert "think.decode" in str(err.value) and ("GB" in str(err.value) or "no candidate" in str(err.value))
    with pytest.raises(PlanRejected):
        deploy(path, "ray", tmp_path / "out")
    from terrazzo.sim.simulate_command import simulate_command

    with pytest.raises(PlanRejected):
        simulate_command(str(path), None, 10, None, 0, None, False)
    assert load_catalog().device("l4").memory_gb.value < 140  # 70B fp16 weights alone are 140 GB
