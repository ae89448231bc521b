"""KubeRay manifests from a fleet, for `kubectl apply` on a cluster that runs the KubeRay operator:
- a ConfigMap holding the plan, mounted into the head, where `terrazzo serve` reads it;
- a RayCluster (ray.io/v1) with a CPU-only head and one worker group per device type, whose pods ask
  for the vendor's device-plugin resource and start Ray with the `tz/<device>` custom resource;
- a Service in front of the head's `terrazzo serve` port.
A RayService is not used: it wraps Ray Serve applications, and terrazzo serves through its own
FastAPI app with its own controller, which a plain RayCluster leaves in charge.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from terrazzo.deploy.fleet import HEADROOM, DeviceGroup, Fleet

SERVE_PORT = 8000
PLAN_MOUNT = "/etc/terrazzo"
LABELS = {"app.kubernetes.io/name": "terrazzo", "app.kubernetes.io/managed-by": "terrazzo-deploy"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def manifests(fleet: Fleet, namespace: str = "default", image: str | None = None, ray_version: str = "2.60.0",
              artifacts: dict[str, list[str]] | None = None, run_config: str | None = None) -> list[dict[str, Any]]:
    name = dns_label(f"terrazzo-{fleet.agent}")
    image = image or f"rayproject/ray:{ray_version}-py311"
    meta = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
    plan_map: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**meta, "name": f"{name}-plan"},
                "data": {"plan.json": json.dumps(fleet.plan_json, indent=2)}}
    if run_config is not None:  # the router's run config: LLM pools attached to the vLLM StatefulSets
        plan_map["data"]["runtime.yaml"] = run_config
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta,
        "spec": {
            "rayVersion": ray_version,
            "enableInTreeAutoscaling": True,
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                              "template": _head_template(fleet, name, image)},
            "workerGroupSpecs": [_worker_group(g, image, fleet.fill_in, artifacts or {}) for g in fleet.groups],
        },
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": f"{name}-serve"},
               "spec": {"selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                        "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT}]}}
    return [plan_map, cluster, service]


def _head_template(fleet: Fleet, name: str, image: str) -> dict[str, Any]:
    cpu, memory = str(fleet.head["cpus"]), str(fleet.head["memory"])
    container = {
        "name": "ray-head",
        "image": image,
        "ports": [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}, {"containerPort": SERVE_PORT, "name": "serve"}],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "env": [{"name": "TERRAZZO_PLAN", "value": f"{PLAN_MOUNT}/plan.json"},
                {"name": "TERRAZZO_RUN_CONFIG", "value": f"{PLAN_MOUNT}/runtime.yaml"},
                {"name": "TERRAZZO_TOKEN", "valueFrom": {"secretKeyRef": {"name": "terrazzo-token", "key": "token"}}}],
        "volumeMounts": [{"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}],
    }
    return {"metadata": {"labels": dict(LABELS)},
            "spec": {"containers": [container], "volumes": [{"name": "plan", "configMap": {"name": f"{name}-plan"}}]}}


def _worker_group(g: DeviceGroup, image: str, todo: str, artifacts: dict[str, list[str]]) -> dict[str, Any]:
    params = {"resources": json.dumps({g.resource: g.per_node})}
    limits: dict[str, str] = {}
    spec: dict[str, Any] = {}
    if g.kind == "cpu":
        limits["cpu"] = str(g.cores_per_node)
    else:
        limits[g.k8s_resource or todo] = str(g.per_node)
        if g.ray_gpus:
            params["num-gpus"] = str(g.per_node)
        spec["tolerations"] = [{"key": g.k8s_resource, "operator": "Exists", "effect": "NoSchedule"}]
    if g.node_label:
        spec["nodeSelector"] = {g.node_label: todo}
    annotations = {"terrazzo.io/pools": ",".join(p.pool for p in g.pools), "terrazzo.io/sizing-source": g.source}
    served = {p.pool: artifacts[p.pool] for p in g.pools if p.pool in artifacts}
    if served:
        annotations["terrazzo.io/artifacts"] = json.dumps(served, sort_keys=True)
    container = {"name": "ray-worker", "image": image, "resources": {"limits": limits, "requests": dict(limits)}}
    return {
        "groupName": g.name,
        "replicas": g.nodes,
        "minReplicas": g.nodes,
        "maxReplicas": g.nodes * HEADROOM,
        "rayStartParams": params,
        "template": {"metadata": {"labels": dict(LABELS), "annotations": annotations},
                     "spec": {"containers": [container], **spec}},
    }


def dns_label(name: str) -> str:
    """A DNS-1123 label: lower case, [a-z0-9-], at most 63 characters; a longer name keeps a hash of the
    whole, so two pools whose names differ past the cut still get two labels."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if len(out) > 63:
        out = out[:54].rstrip("-") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return out or "terrazzo"
