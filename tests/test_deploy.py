"""`terrazzo deploy`: cluster files from a plan, checked against Ray's own schema and the Kubernetes
schemas; a broken file fails validation; bad plans say which field to fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cli import app
from terrazzo.deploy.fleet import fleet_from_plan
from terrazzo.deploy.kuberay import manifests
from terrazzo.deploy.ray_cluster import ray_config
from terrazzo.deploy.validate import manifest_errors, ray_config_errors
from terrazzo.deploy.write import deploy, read_artifacts
from terrazzo.errors import DeployError

ROOT = Path(__file__).resolve().parent.parent


def _pool(op: str, device: str, tp: int, replicas: int, pp: int = 1) -> dict:
    return {"name": f"{device}-tp{tp}-pp{pp}", "device": device, "tp": tp, "pp": pp, "engine": "builtin",
            "batch": 8, "replicas": replicas, "ops": [{"op": op, "share": 1.0}]}


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    """Three vendors and a CPU: H100 tp2 ×6 (12 devices → 2 nodes), MI300X tp1 ×3, Gaudi 3 tp4 ×1, EPYC."""
    doc = {"schema": "terrazzo.plan/v2", "agent": "Mixed_Agent", "pools": [
        _pool("think.prefill", "h100-sxm", 2, 6), _pool("think.decode", "mi300x", 1, 3),
        _pool("write.aggregated", "gaudi3", 4, 1), _pool("search.compute", "epyc-9654", 1, 2)]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


def test_one_worker_group_per_device_type_with_the_vendors_resources(plan_path):
    fleet = fleet_from_plan(plan_path, load_catalog())
    docs = manifests(fleet, namespace="agents")
    cm, cluster, svc = docs
    assert svc["spec"]["selector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayCluster", "Service"]
    assert json.loads(cm["data"]["plan.json"])["agent"] == "Mixed_Agent"
    assert cluster["metadata"]["name"] == "terrazzo-mixed-agent"  # a DNS-1123 name
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"h100-sxm", "mi300x", "gaudi3", "epyc-9654"}
    limits = {n: g["template"]["spec"]["containers"][0]["resources"]["limits"] for n, g in groups.items()}
    assert limits["h100-sxm"] == {"nvidia.com/gpu": "8"}
    assert limits["mi300x"] == {"amd.com/gpu": "8"}
    assert limits["gaudi3"] == {"habana.ai/gaudi": "8"}
    assert limits["epyc-9654"] == {"cpu": str(2 * 96)}
    assert groups["h100-sxm"]["replicas"] == 2 and groups["h100-sxm"]["maxReplicas"] == 4  # 12 GPUs on 8-GPU nodes
    assert json.loads(groups["gaudi3"]["rayStartParams"]["resources"]) == {"tz/gaudi3": 8}
    assert "num-gpus" not in groups["gaudi3"]["rayStartParams"]  # Gaudi is not a GPU to Ray
    assert groups["mi300x"]["rayStartParams"]["num-gpus"] == "8"
    for d in docs:
        assert manifest_errors(d) == [], d["kind"]


def test_ray_config_validates_against_rays_own_schema(plan_path):
    config = ray_config(fleet_from_plan(plan_path, load_catalog()), "aws", "us-east-1")
    assert ray_config_errors(config) == []
    types = config["available_node_types"]
    assert types["tz-h100-sxm"]["resources"] == {"tz/h100-sxm": 8, "GPU": 8}
    assert types["tz-h100-sxm"]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert types["tz-gaudi3"]["resources"] == {"tz/gaudi3": 8}
    assert types["tz-epyc-9654"]["resources"] == {"tz/epyc-9654": 2, "CPU": 192}
    assert config["head_node_type"] == "head" and config["max_workers"] == 2 * (2 + 1 + 1 + 1)


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c["available_node_types"]["tz-gaudi3"]["resources"].update({"tz/gaudi3": "8"}), "is not of type"),
    (lambda c: c["available_node_types"]["tz-gaudi3"].pop("node_config"), "node_config"),
    (lambda c: c.update(head_node_typo="head"), "Additional properties"),
])
def test_a_broken_ray_config_fails(plan_path, mutate, expect):
    config = ray_config(fleet_from_plan(plan_path, load_catalog()))
    mutate(config)
    assert any(expect in e for e in ray_config_errors(config))


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 8}), "is not of type 'string'"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(imagee="x"),
     "Additional properties"),  # strict Kubernetes PodSpec: a typo is caught
    (lambda c: c["spec"]["workerGroupSpecs"][0].update(replicas=9), "minReplicas ≤ replicas ≤ maxReplicas"),
    (lambda c: c["spec"]["workerGroupSpecs"][1].update(groupName=c["spec"]["workerGroupSpecs"][0]["groupName"]),
     "used twice"),
    (lambda c: c["spec"]["headGroupSpec"].pop("template"), "'template' is a required property"),
])
def test_a_broken_raycluster_fails(plan_path, mutate, expect):
    cluster = manifests(fleet_from_plan(plan_path, load_catalog()))[1]
    broken = copy.deepcopy(cluster)
    mutate(broken)
    assert any(expect in e for e in manifest_errors(broken)), manifest_errors(broken)


def test_a_broken_core_object_fails(plan_path):
    svc = manifests(fleet_from_plan(plan_path, load_catalog()))[2]
    svc["spec"]["ports"][0]["port"] = "eight thousand"
    assert manifest_errors(svc)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["pools"][0].update(device="h900"), r"pools\[0\]\.device: .*h900"),
    (lambda d: d["pools"][1].pop("device"), r"pools\[1\]\.device: missing"),
    (lambda d: d["pools"][2].update(tp=16), r"tensor parallelism 16 exceeds the 8 gaudi3 of one node"),
    (lambda d: d.update(schema="other/v9"), r"schema: expected terrazzo.plan/v2"),
    (lambda d: d.update(pools=[]), r"pools: the plan has no pools"),
    (lambda d: d.update(schema="terrazzo.plan/v1"), r"terrazzo.plan/v1 files price each op's replicas apart.*re-plan"),
    (lambda d: d["pools"][0]["ops"][0].update(share=0.5), r"op 'think.prefill' has shares summing to 0.5"),
])
def test_bad_plans_name_the_field_and_the_fix(plan_path, edit, match):
    doc = json.loads(plan_path.read_text())
    edit(doc)
    plan_path.write_text(json.dumps(doc))
    with pytest.raises(DeployError, match=match) as err:
        fleet_from_plan(plan_path, load_catalog())
    assert str(plan_path) in str(err.value) or "targets.yaml" in str(err.value)


def test_artifacts_are_recorded_per_pool(plan_path, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"schema": "terrazzo.artifacts/v1", "artifacts": [],
                                                   "pools": {"epyc-9654-tp1-pp1": ["pii.llvm-cpu.vmfb"]}}))
    out = deploy(plan_path, "kuberay", tmp_path / "out", artifacts=art, check=False)  # the fixture records no inputs
    cluster = list(yaml.safe_load_all(out.files[0].read_text()))[1]
    epyc = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "epyc-9654")
    notes = epyc["template"]["metadata"]["annotations"]
    assert json.loads(notes["terrazzo.io/artifacts"]) == {"epyc-9654-tp1-pp1": ["pii.llvm-cpu.vmfb"]}
    (art / "manifest.json").write_text("{}")
    with pytest.raises(DeployError, match=r"schema: expected terrazzo\.artifacts/v1"):
        read_artifacts(art)


def test_cli_writes_validated_files_and_lists_what_to_fill_in(tmp_path):
    res = CliRunner().invoke(app, ["deploy", str(ROOT / "examples/plans/voice-agent.plan.json"), "--target", "ray",
                                   "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "validated" in res.output and "fill in" in res.output
    config = yaml.safe_load((tmp_path / "ray-cluster.yaml").read_text())
    assert ray_config_errors(config) == []
    res = CliRunner().invoke(app, ["deploy", str(ROOT / "examples/plans/voice-agent.plan.json"), "--target", "k8s",
                                   "-o", str(tmp_path)])
    assert isinstance(res.exception, DeployError) and "--target" in str(res.exception)  # main() prints it, exit 2
