"""The serving engines `deploy` starts: one vLLM OpenAI server per replica of each LLM pool, with the
flags the runtime uses (runtime/engines/vllm_server.py: the plan's TP/PP, its batch as --max-num-seqs,
prefix caching), on the official vLLM image, asking for the pool's devices; and the run config that
points terrazzo's router at them (`vllm.attach`).

A pool split into prefill and decode gets vLLM's NIXL KV connector (`kv_role: kv_both` on both sides,
the side channel on the pod's IP). That configuration is generated, not run here: see docs/runtime.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.deploy.fleet import DeviceGroup, Fleet
from terrazzo.deploy.kuberay import dns_label
from terrazzo.runtime.engines.vllm_server import VllmServerSpec

VLLM_IMAGE = "vllm/vllm-openai"
VLLM_VERSION = "0.32.0"          # the engine version the runtime is tested with (constraints-vllm.txt)
VLLM_PORT = 8000
NIXL_SIDE_PORT = 5600
NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
LLM_KINDS = {"llm.aggregated": "aggregated", "llm.prefill": "prefill", "llm.decode": "decode"}


@dataclass(frozen=True)
class EngineServer:
    """One LLM pool's servers: what they run and where."""

    pool: str
    group: DeviceGroup
    role: str                    # aggregated, prefill or decode
    model: str                   # Hugging Face id (from the catalog's source) or the fill-in marker
    served_name: str             # the catalog model name the agent uses
    replicas: int
    spec: VllmServerSpec
    priced_engine: str = "vllm"  # the engine (and version) the plan priced the pool on

    @property
    def devices(self) -> int:
        return self.spec.tensor_parallel * self.spec.pipeline_parallel


def _hub_id(catalog: Catalog, model: str) -> str | None:
    """`org/name` from the catalog's Hugging Face source URL for the model's shape, when it has one."""
    try:
        src = str(getattr(catalog.model(model), "shape_source", "") or "")
    except Exception:
        return None
    if "huggingface.co/" not in src:
        return None
    parts = src.split("huggingface.co/", 1)[1].split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def _node_models(fleet: Fleet) -> dict[str, str]:
    """Node id → model, from the agent the plan was made for (its path is in the plan's inputs)."""
    agent_path = (fleet.plan_json.get("inputs") or {}).get("agent")
    if not agent_path or not Path(agent_path).is_file():
        return {}
    from terrazzo.spec.spec_loader import load_agent

    try:
        graph = load_agent(agent_path).graph
    except Exception:
        return {}
    return {n.id: n.model for n in graph.nodes if n.kind == "llm"}


def engine_servers(fleet: Fleet, catalog: Catalog) -> list[EngineServer]:
    """The LLM pools of the plan, each with its server spec; other pools stay on Ray workers."""
    ops = fleet.plan_json.get("ops") or [{"name": k, **v} for k, v in (fleet.plan_json.get("placements") or {}).items()]
    models = _node_models(fleet)
    priced = {str(p.get("name")): " ".join(str(p.get(k) or "") for k in ("engine", "engine_version")).strip()
              for p in fleet.plan_json.get("pools") or [] if isinstance(p, dict)}
    out: dict[str, EngineServer] = {}
    for o in ops:
        name = str(o.get("name", ""))
        kind = str(o.get("kind") or ("llm." + name.rpartition(".")[2] if "." in name else ""))
        if kind not in LLM_KINDS:
            continue
        group = next((g for g in fleet.groups for p in g.pools if name in p.ops), None)
        if group is None or group.kind == "cpu" or o.get("pool") in out:
            continue
        node = str(o.get("node") or name.rpartition(".")[0])
        model = models.get(node, "")
        role = LLM_KINDS[kind]
        spec = VllmServerSpec(model=_hub_id(catalog, model) or fleet.fill_in if model else fleet.fill_in,
                              served_name=model or node, tensor_parallel=int(o.get("tp", 1)),
                              pipeline_parallel=int(o.get("pp", 1)), max_num_seqs=max(1, int(o.get("batch", 1))),
                              max_model_len=8192, kv_transfer_config=dict(NIXL) if role != "aggregated" else None)
        pool = str(o.get("pool"))
        out[pool] = EngineServer(pool, group, role, spec.model, spec.served_name, int(o.get("replicas", 1)), spec,
                                 priced.get(pool) or "vllm")
    return list(out.values())


def statefulset(e: EngineServer, name: str, namespace: str, labels: dict[str, str], fill_in: str
                ) -> list[dict[str, Any]]:
    """A headless Service and a StatefulSet of `replicas` vLLM servers (stable names: <sts>-<i>.<svc>)."""
    sts = dns_label(f"{name}-{e.pool}")
    sel = {**labels, "terrazzo.io/pool": dns_label(e.pool)}
    env: list[dict[str, Any]] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "hf-token", "key": "token", "optional": True}}}, {"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    ports = [{"containerPort": VLLM_PORT, "name": "http"}]
    if e.spec.kv_transfer_config:
        env += [{"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_PORT)}]
        ports.append({"containerPort": NIXL_SIDE_PORT, "name": "nixl"})
    limits = {e.group.k8s_resource or fill_in: str(e.devices)}
    probe = {"httpGet": {"path": "/health", "port": VLLM_PORT}, "periodSeconds": 10}
    container = {
        "name": "vllm",
        "image": image_for(e.group, fill_in),
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [*e.spec.args(), "--host", "0.0.0.0", "--port", str(VLLM_PORT)],
        "env": env,
        "ports": ports,
        "resources": {"limits": limits, "requests": dict(limits)},
        "startupProbe": {**probe, "failureThreshold": 180},  # weights download and load: up to 30 min
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "volumeMounts": [{"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
                         {"name": "shm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {"containers": [container], "volumes": [
        {"name": "hf-cache", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}]}
    if e.group.k8s_resource:
        pod["tolerations"] = [{"key": e.group.k8s_resource, "operator": "Exists", "effect": "NoSchedule"}]
    if e.group.node_label:
        pod["nodeSelector"] = {e.group.node_label: fill_in}
    meta = {"name": sts, "namespace": namespace, "labels": sel,
            "annotations": {"terrazzo.io/pool": e.pool, "terrazzo.io/role": e.role,
                            "terrazzo.io/engine": f"vllm-{VLLM_VERSION}", "terrazzo.io/priced-engine": e.priced_engine}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "annotations": {}},
               "spec": {"clusterIP": "None", "selector": sel,
                        "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": VLLM_PORT}]}}
    return [service, {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
                      "spec": {"serviceName": sts, "replicas": e.replicas, "selector": {"matchLabels": sel},
                               "podManagementPolicy": "Parallel",
                               "template": {"metadata": {"labels": sel}, "spec": pod}}}]


def image_for(group: DeviceGroup, fill_in: str) -> str:
    """The official vLLM OpenAI image is built for NVIDIA GPUs; other vendors' vLLM builds (ROCm, Gaudi)
    are published by their vendors under their own names and tags, which the user fills in."""
    return f"{VLLM_IMAGE}:v{VLLM_VERSION}" if group.vendor.lower() == "nvidia" else fill_in


def replica_urls(e: EngineServer, name: str, namespace: str) -> list[str]:
    sts = dns_label(f"{name}-{e.pool}")
    return [f"http://{sts}-{i}.{sts}.{namespace}.svc.cluster.local:{VLLM_PORT}" for i in range(e.replicas)]


def run_config(servers: list[EngineServer], attach: dict[str, list[str]] | None) -> dict[str, Any]:
    """The run config terrazzo's router reads: LLM pools on vLLM, attached to the servers `deploy` started
    (KubeRay), or launched by the runtime on Ray actors of the pool's device type (Ray)."""
    vllm: dict[str, Any] = {"parallelism": "plan"}
    if attach is not None:
        vllm["attach"] = attach
    else:
        vllm["python"] = "python3"  # the vLLM image's interpreter on the GPU node types
    models = {e.served_name: {"checkpoint": e.model, "served_name": e.served_name} for e in servers}
    return {"engine": "vllm", "models": models, "vllm": vllm}


