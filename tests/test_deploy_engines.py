"""`terrazzo deploy` starts engines: a vLLM StatefulSet per LLM pool with the pool's flags and devices
(KubeRay), the vLLM image on the Ray node types that host LLM pools (Ray), NIXL for P/D pools, and the
run config that points terrazzo's router at them; every file checked against its schema."""

from __future__ import annotations

from pathlib import Path

import yaml

from terrazzo.deploy.validate import manifest_errors
from terrazzo.deploy.write import deploy
from terrazzo.runtime.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
AGG = ROOT / "examples/plans/voice-agent.plan.json"              # think.aggregated: b200 TP=2, batch 61
PD = ROOT / "examples/runtime/voice-agent.disaggregated.plan.json"  # prefill on gaudi3, decode on b200 TP=2


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _flags(args: list[str]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") and not args[i + 1].startswith("--")}


def test_kuberay_starts_vllm_per_llm_pool_with_its_flags(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the plan names its agent by a path relative to the repo
    deploy(AGG, "kuberay", tmp_path)
    docs = _docs(tmp_path / "kuberay.yaml")
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    assert len(sts) == 1 and all(manifest_errors(d) == [] for d in docs)
    pod = sts[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    flags = _flags(c["args"])
    assert c["image"] == "vllm/vllm-openai:v0.32.0"
    assert (flags["--tensor-parallel-size"], flags["--pipeline-parallel-size"], flags["--max-num-seqs"]) == \
        ("2", "1", "61")
    assert flags["--model"] == "meta-llama/Llama-3.1-70B" and "--enable-prefix-caching" in c["args"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"} and sts[0]["spec"]["replicas"] == 1
    assert "--kv-transfer-config" not in c["args"]
    runtime = RunConfig.model_validate(yaml.safe_load((tmp_path / "terrazzo-runtime.yaml").read_text()))
    pool = "b200-tp2-pp1"
    svc = sts[0]["spec"]["serviceName"]
    assert runtime.engine == "vllm" and runtime.vllm.attach[pool] == [
        f"http://{svc}-0.{svc}.default.svc.cluster.local:8000"]
    plan_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert yaml.safe_load(plan_map["data"]["runtime.yaml"]) == yaml.safe_load(
        (tmp_path / "terrazzo-runtime.yaml").read_text())


def test_pd_pools_get_the_nixl_connector(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    written = deploy(PD, "kuberay", tmp_path)
    sts = {d["metadata"]["annotations"]["terrazzo.io/role"]: d for d in _docs(tmp_path / "kuberay.yaml")
           if d["kind"] == "StatefulSet"}
    assert set(sts) == {"prefill", "decode"}
    for role, d in sts.items():
        c = d["spec"]["template"]["spec"]["containers"][0]
        cfg = yaml.safe_load(_flags(c["args"])["--kv-transfer-config"])
        assert cfg == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}, role
        assert {e["name"] for e in c["env"]} >= {"VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_NIXL_SIDE_CHANNEL_PORT"}
    assert sts["decode"]["spec"]["replicas"] == 7 and sts["prefill"]["spec"]["replicas"] == 14
    assert sts["prefill"]["spec"]["template"]["spec"]["containers"][0]["image"] == "<fill in>"  # Gaudi: vendor build
    assert any("vLLM image for pool gaudi3-tp1-pp2" in t for t in written.todo)


def test_ray_gives_llm_node_types_the_vllm_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    deploy(AGG, "ray", tmp_path)
    cfg = yaml.safe_load((tmp_path / "ray-cluster.yaml").read_text())
    assert cfg["available_node_types"]["tz-b200"]["docker"] == {"worker_image": "vllm/vllm-openai:v0.32.0"}
    runtime = RunConfig.model_validate(yaml.safe_load((tmp_path / "terrazzo-runtime.yaml").read_text()))
    assert runtime.engine == "vllm" and runtime.vllm.attach == {} and runtime.vllm.python == "python3"
