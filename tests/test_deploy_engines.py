"""`terrazzo deploy` starts engines: a vLLM StatefulSet per LLM pool with the pool's flags and devices
(KubeRay), the vLLM image on the Ray node types that host LLM pools (Ray), NIXL for P/D pools, and the
run config that points terrazzo's router at them; every file checked against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from terrazzo.deploy.validate import manifest_errors
from terrazzo.deploy.write import deploy
from terrazzo.runtime.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
AGG = ROOT / "examples/plans/voice-agent.plan.json"              # the voice agent at 5 req/s
PD = ROOT / "examples/runtime/voice-agent.disaggregated.plan.json"  # prefill on gaudi3, decode on b200 TP=2


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _flags(args: list[str]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") and not args[i + 1].startswith("--")}


def _llm_pools(plan: Path) -> list[dict]:
    return [p for p in json.loads(plan.read_text())["pools"] if p["role"] != "shared"]


def test_kuberay_starts_vllm_per_llm_pool_with_its_flags(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the plan names its agent by a path relative to the repo
    deploy(AGG, "kuberay", tmp_path)
    docs = _docs(tmp_path / "kuberay.yaml")
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    pools = _llm_pools(AGG)
    assert len(sts) == len(pools) and all(manifest_errors(d) == [] for d in docs)
    written = []
    for s in sts:
        c = s["spec"]["template"]["spec"]["containers"][0]
        flags = _flags(c["args"])
        written.append((int(flags["--tensor-parallel-size"]), int(flags["--pipeline-parallel-size"]),
                        int(flags["--max-num-seqs"]), s["spec"]["replicas"]))
        assert flags["--model"] == "meta-llama/Llama-3.1-70B" and "--enable-prefix-caching" in c["args"]
        role = s["metadata"]["annotations"]["terrazzo.io/role"]
        assert ("--kv-transfer-config" in c["args"]) == (role in ("prefill", "decode")), role
        if c["image"] == "vllm/vllm-openai:v0.32.0":  # NVIDIA pools: the official image, GPUs per replica
            tp, pp = written[-1][:2]
            assert c["resources"]["limits"] == {"nvidia.com/gpu": str(tp * pp)}
    assert sorted(written) == sorted((p["tp"], p["pp"], p["batch"], p["replicas"]) for p in pools)
    runtime = RunConfig.model_validate(yaml.safe_load((tmp_path / "terrazzo-runtime.yaml").read_text()))
    assert runtime.engine == "vllm" and set(runtime.vllm.attach) == {p["name"] for p in pools}
    svcs = {s["spec"]["serviceName"] for s in sts}
    assert all(len(urls) == 1 and urls[0].split(".")[1] in svcs for urls in runtime.vllm.attach.values())
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
    pools = {p["role"]: p for p in _llm_pools(PD)}
    assert {r: s["spec"]["replicas"] for r, s in sts.items()} == {r: p["replicas"] for r, p in pools.items()}
    if pools["prefill"]["device"] == "gaudi3":  # no official vLLM image for Gaudi: the vendor's build, to fill in
        assert sts["prefill"]["spec"]["template"]["spec"]["containers"][0]["image"] == "<fill in>"
        assert any("vLLM image for pool" in t and "gaudi3" in t for t in written.todo)


def test_ray_gives_llm_node_types_the_vllm_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    deploy(AGG, "ray", tmp_path)
    cfg = yaml.safe_load((tmp_path / "ray-cluster.yaml").read_text())
    assert cfg["available_node_types"]["tz-b200"]["docker"] == {"worker_image": "vllm/vllm-openai:v0.32.0"}
    runtime = RunConfig.model_validate(yaml.safe_load((tmp_path / "terrazzo-runtime.yaml").read_text()))
    assert runtime.engine == "vllm" and runtime.vllm.attach == {} and runtime.vllm.python == "python3"


def test_each_vllm_server_says_which_engine_its_pool_was_priced_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    written = deploy(AGG, "kuberay", tmp_path)
    pools = {p["name"]: p for p in _llm_pools(AGG)}
    sts = [d for d in _docs(tmp_path / "kuberay.yaml") if d["kind"] == "StatefulSet"]
    notes = [d["metadata"]["annotations"] for d in sts]
    priced = {a["terrazzo.io/pool"]: a["terrazzo.io/priced-engine"] for a in notes}
    assert priced == {n: f"{p['engine']} {p['engine_version']}".strip() for n, p in pools.items()}
    foreign = [n for n, p in pools.items() if p["engine"] not in ("vllm", "builtin")]
    assert foreign  # the example prices NVIDIA pools on TensorRT-LLM: the files start vLLM and say so
    for n in foreign:
        assert any(f"pool {n} was priced on {pools[n]['engine']}" in t for t in written.todo), n


def test_long_pool_names_keep_distinct_dns_labels() -> None:
    from terrazzo.deploy.kuberay import DNS_LABEL, dns_label

    a = dns_label("terrazzo-voice-agent-think.decode@b200-tp2-pp1-trtllm-1.0-b108-kv-retain-host")
    b = dns_label("terrazzo-voice-agent-think.decode@b200-tp2-pp1-trtllm-1.0-b108-kv-retain-disk")
    assert a != b and all(len(x) <= 63 and DNS_LABEL.match(x) for x in (a, b))
    assert dns_label("Think.Decode@B200") == "think-decode-b200" and dns_label("@@") == "terrazzo"
