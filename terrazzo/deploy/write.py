"""`terrazzo deploy`: a plan in, validated cluster files out, with the list of what a person must fill in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.deploy.engines import (
    VLLM_IMAGE,
    VLLM_VERSION,
    engine_servers,
    image_for,
    replica_urls,
    run_config,
    statefulset,
)
from terrazzo.deploy.fleet import Fleet, fleet_from_plan
from terrazzo.deploy.kuberay import LABELS, dns_label, manifests
from terrazzo.deploy.ray_cluster import ray_config
from terrazzo.deploy.validate import manifest_errors, ray_config_errors
from terrazzo.errors import DeployError
from terrazzo.plan_file import ARTIFACTS_SCHEMA, read_plan_json

TARGETS = ("ray", "kuberay")


@dataclass
class Written:
    files: list[Path]
    fleet: Fleet
    todo: list[str] = field(default_factory=list)


def read_artifacts(folder: str | Path) -> dict[str, list[str]]:
    """Pool → artifact files, from the manifest.json `terrazzo compile --emit vmfb --plan P -o DIR` writes."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DeployError(f"{path}: not found; write it with `terrazzo compile AGENT --emit vmfb --plan PLAN -o "
                          f"{folder}`")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if doc.get("schema") != ARTIFACTS_SCHEMA:
        raise DeployError(f"{path}: schema: expected {ARTIFACTS_SCHEMA}, got {doc.get('schema')!r}")
    pools = doc.get("pools", {})
    if not isinstance(pools, dict) or not all(isinstance(v, list) for v in pools.values()):
        raise DeployError(f"{path}: pools: expected an object of pool name → list of artifact files")
    return {str(k): [str(f) for f in v] for k, v in pools.items()}


def deploy(plan: str | Path, target: str, out_dir: str | Path, namespace: str = "default", image: str | None = None,
           provider: str = "aws", region: str | None = None, artifacts: str | Path | None = None,
           catalogs: list[Path] | None = None, check: bool = True) -> Written:
    """Cluster files for a plan. A `terrazzo.plan/v2` file is first re-checked against the inputs it records
    (plan/recheck.py; refused, naming the binding constraint, when it fails); `check=False` skips that for
    a hand-written plan without inputs. A bare placement file carries no inputs and is deployed as written."""
    if target not in TARGETS:
        raise DeployError(f"--target: '{target}' is not one of {', '.join(TARGETS)}")
    if check:
        from terrazzo.plan.recheck import is_plan, recheck

        doc = read_plan_json(plan, DeployError)
        if is_plan(doc):
            recheck(doc, str(plan), Path(plan).resolve().parent, DeployError)
    catalog = load_catalog(catalogs or [])
    fleet = fleet_from_plan(plan, catalog)
    servers = engine_servers(fleet, catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if target == "ray":
        config = ray_config(fleet, provider, region, image)
        for e in servers:  # the runtime's Ray actors start vLLM on these nodes: give them the vLLM image
            config["available_node_types"][f"tz-{e.group.name}"]["docker"] = {
                "worker_image": image_for(e.group, fleet.fill_in)}
        _check("Ray cluster config", ray_config_errors(config))
        files = [_write_yaml(out / "ray-cluster.yaml", [config], _header(fleet, "ray up ray-cluster.yaml"))]
        runtime = run_config(servers, attach=None)
    else:
        name = dns_label(f"terrazzo-{fleet.agent}")
        runtime = run_config(servers, {e.pool: replica_urls(e, name, namespace) for e in servers})
        docs = manifests(fleet, namespace, image, artifacts=read_artifacts(artifacts) if artifacts else None,
                         run_config=yaml.safe_dump(runtime, sort_keys=False))
        for e in servers:
            docs += statefulset(e, name, namespace, LABELS, fleet.fill_in)
        for d in docs:
            _check(f"{d['kind']} {d['metadata']['name']}", manifest_errors(d))
        files = [_write_yaml(out / "kuberay.yaml", docs, _header(fleet, "kubectl apply -f kuberay.yaml"))]
    if servers:
        _check("run config", _run_config_errors(runtime))
        files.append(_write_yaml(out / "terrazzo-runtime.yaml", [runtime], _runtime_header(servers, target)))
    return Written(files, fleet, _todo(fleet, target, provider, image) + _engine_todo(servers, fleet.fill_in))


def _runtime_header(servers: list, target: str) -> str:
    how = ("the runtime attaches to the vLLM StatefulSets above (kuberay.yaml); mounted in the head at "
           "/etc/terrazzo/runtime.yaml" if target == "kuberay" else
           "run `terrazzo serve ... --backend ray --config terrazzo-runtime.yaml` on the head: it starts vLLM "
           "on Ray actors of each pool's device type")
    lines = ["Run config for terrazzo's router: LLM pools on vLLM " + VLLM_VERSION + ".", how]
    lines += [f"{e.pool}: {e.role}, {e.replicas} × vLLM TP={e.spec.tensor_parallel} PP={e.spec.pipeline_parallel} "
              f"max-num-seqs {e.spec.max_num_seqs}, model {e.model}" for e in servers]
    if any(e.spec.kv_transfer_config for e in servers):
        lines.append("P/D pools carry vLLM's NIXL connector config (generated, not run by terrazzo: docs/runtime.md)")
    return "".join(f"# {line}\n" for line in lines)


def _run_config_errors(runtime: dict[str, Any]) -> list[str]:
    from pydantic import ValidationError

    from terrazzo.runtime.config import RunConfig

    try:
        RunConfig.model_validate(runtime)
    except ValidationError as exc:
        return [str(e["loc"]) + ": " + e["msg"] for e in exc.errors()]
    return []


def _engine_todo(servers: list, fill_in: str) -> list[str]:
    todo = [f"the vLLM image for pool {e.pool} ({e.group.vendor} {e.group.device}): the official {VLLM_IMAGE} "
            "image is built for NVIDIA GPUs; use your vendor's vLLM build" for e in servers
            if image_for(e.group, fill_in) == fill_in]
    todo += [f"the model of pool {e.pool} (--model): the catalog names no Hugging Face id for '{e.served_name}'"
            for e in servers if e.model == fill_in]
    todo += [f"pool {e.pool} was priced on {e.priced_engine}; these files start vLLM {VLLM_VERSION} there, whose "
             f"speed the plan did not price: serve it with {e.priced_engine.split()[0]} instead, or measure vLLM there "
             f"before relying on the plan's latencies"
             for e in servers if not e.priced_engine.startswith(("vllm", "builtin"))]
    if servers:
        todo.append("a Secret 'hf-token' with key 'token' if the models are gated on Hugging Face (optional)")
    return todo


def _check(what: str, errors: list[str]) -> None:
    if errors:  # a bug in terrazzo, not in the user's input: say so rather than write a broken file
        raise DeployError(f"generated {what} fails its schema ({'; '.join(errors[:5])}); please report this")


def _header(fleet: Fleet, how: str) -> str:
    lines = [f"Generated by `terrazzo deploy` from {fleet.plan_path} (agent {fleet.agent}).", f"Apply: {how}",
             f"Every '{fleet.fill_in}' must be replaced first."]
    for g in fleet.groups:
        pools = ", ".join(f"{p.pool} ×{p.replicas}" for p in g.pools)
        lines.append(f"{g.device}: {g.devices} devices on {g.nodes} node(s) of {g.per_node} — pools {pools}")
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the plan in the ConfigMap) as literal blocks, readable and diffable."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s
                                                            else None))


def _write_yaml(path: Path, docs: list[dict[str, Any]], header: str) -> Path:
    path.write_text(header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True))
    return path


def _todo(fleet: Fleet, target: str, provider: str, image: str | None) -> list[str]:
    todo = []
    if target == "ray":
        if provider == "aws":
            todo.append("provider.region and every node_config.ImageId (an AMI with your drivers)")
            todo += [f"node_config.InstanceType of tz-{g.name}: no catalogued AWS instance has {g.device}"
                     for g in fleet.groups if not g.aws_instance]
        else:
            todo.append("provider.head_ip and provider.worker_ips (your machines)")
    else:
        todo.append("a Secret 'terrazzo-token' with key 'token' (the API bearer token): "
                    "kubectl create secret generic terrazzo-token --from-literal=token=...")
        todo += [f"nodeSelector {g.node_label} of group {g.name}: the product name your nodes carry"
                 for g in fleet.groups if g.node_label]
        if image is None:
            todo.append("the container image: the default rayproject/ray image has no terrazzo; build one with "
                        "`pip install 'terrazzo[runtime]'` and pass --image")
    return todo
