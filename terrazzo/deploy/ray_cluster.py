"""A Ray cluster launcher config (`ray up`) from a fleet: a head node type and one worker node type
per device type, each advertising `tz/<device>` so the runtime's pools land on matching nodes."""

from __future__ import annotations

from typing import Any

from terrazzo.deploy.fleet import HEADROOM, DeviceGroup, Fleet
from terrazzo.errors import DeployError

PROVIDERS = ("aws", "local")


def ray_config(fleet: Fleet, provider: str = "aws", region: str | None = None, image: str | None = None
               ) -> dict[str, Any]:
    if provider not in PROVIDERS:
        raise DeployError(f"--provider: '{provider}' is not one of {', '.join(PROVIDERS)}; "
                          "for other clouds start from the aws file and change `provider` and `node_config`")
    todo = fleet.fill_in
    types: dict[str, Any] = {
        "head": {"resources": {"CPU": int(fleet.head["cpus"])}, "node_config": _node_config(provider, None, todo),
                 "min_workers": 0, "max_workers": 0},
    }
    for g in fleet.groups:
        types[f"tz-{g.name}"] = {
            "resources": _resources(g),
            "node_config": _node_config(provider, g.aws_instance, todo),
            "min_workers": g.nodes,
            "max_workers": g.nodes * HEADROOM,
        }
    config: dict[str, Any] = {
        "cluster_name": f"terrazzo-{fleet.agent}".lower(),
        "max_workers": sum(g.nodes * HEADROOM for g in fleet.groups),
        "provider": ({"type": "aws", "region": region or todo} if provider == "aws"
                     else {"type": "local", "head_ip": todo, "worker_ips": []}),
        "available_node_types": types,
        "head_node_type": "head",
        "setup_commands": ["pip install 'terrazzo[runtime]'"],
    }
    if image:
        config["docker"] = {"image": image, "container_name": "terrazzo"}
    return config


def _resources(g: DeviceGroup) -> dict[str, int]:
    out = {g.resource: g.per_node}
    if g.kind == "cpu":
        out["CPU"] = g.cores_per_node
    elif g.ray_gpus:
        out["GPU"] = g.per_node
    return out


def _node_config(provider: str, instance: str | None, todo: str) -> dict[str, Any]:
    if provider == "aws":
        return {"InstanceType": instance or todo, "ImageId": todo}
    return {}
