"""What a plan asks of a cluster: per device type, the pools placed on it, the devices they need and
the nodes that hold them. Both output formats (Ray launcher, KubeRay) are written from this."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import CatalogError, DeployError
from terrazzo.plan_file import PLACEMENT_SCHEMA, PLAN_SCHEMA, plan_pools, read_plan_json, refuse_old

HEADROOM = 2  # max nodes per group = planned × this: room for the controller to scale up


@dataclass(frozen=True)
class PoolNeed:
    pool: str
    device: str
    tp: int
    pp: int
    replicas: int
    ops: tuple[str, ...]

    @property
    def devices(self) -> int:
        return self.replicas * self.tp * self.pp


@dataclass(frozen=True)
class DeviceGroup:
    """Nodes of one device type. `per_node` accelerators (or CPU sockets) each; `k8s_resource` None for CPUs."""

    device: str
    vendor: str
    kind: str
    per_node: int
    cores_per_node: int
    pools: tuple[PoolNeed, ...]
    k8s_resource: str | None
    node_label: str | None
    ray_gpus: bool
    aws_instance: str | None
    source: str

    @property
    def name(self) -> str:
        """A DNS-1123 label for the group (Kubernetes names, Ray node types)."""
        return self.device.lower().replace("_", "-").replace(".", "-")

    @property
    def devices(self) -> int:
        return sum(p.devices for p in self.pools)

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.devices / self.per_node))

    @property
    def resource(self) -> str:
        """The Ray custom resource the runtime's actors ask for (terrazzo/runtime/pool_layout.py)."""
        return f"tz/{self.device}"


@dataclass(frozen=True)
class Fleet:
    agent: str
    plan_path: str
    plan_json: dict[str, Any]
    groups: tuple[DeviceGroup, ...]
    head: dict[str, Any]
    fill_in: str


def targets() -> dict[str, Any]:
    return yaml.safe_load(resources.files("terrazzo.deploy").joinpath("data/targets.yaml").read_text())


def load_plan_json(path: str | Path) -> dict[str, Any]:
    doc = read_plan_json(path, DeployError)
    refuse_old(doc, str(path), DeployError)
    if doc.get("schema") not in (PLAN_SCHEMA, PLACEMENT_SCHEMA):
        raise DeployError(f"{path}: schema: expected {PLAN_SCHEMA} or {PLACEMENT_SCHEMA}, got {doc.get('schema')!r}; "
                          f"write the plan with `terrazzo plan ... -o {Path(path).name}`")
    return doc


def _placements(doc: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any], str]]:
    """(op, placement, field path) of a placement file: one pool per op name, replicas as written."""
    placed = doc.get("placements")
    if not isinstance(placed, dict) or not placed:
        raise DeployError(f"{path}: placements: empty; a placement file maps each op to a device")
    return [(op, p, f"placements.{op}") for op, p in placed.items()]


def _plan_pools(doc: dict[str, Any], path: str, catalog: Catalog) -> dict[str, dict[str, Any]]:
    """A v2 plan's pools exactly as the planner sized them: the fleet it priced is the fleet deployed."""
    out: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(plan_pools(doc, path, DeployError)):
        try:
            device = catalog.device(p.device).name
        except CatalogError as exc:
            raise DeployError(f"{path}: pools[{i}].device: {exc}") from None
        out[p.name] = {"device": device, "tp": p.tp, "pp": p.pp, "replicas": p.replicas,
                       "ops": [m.op for m in p.ops]}
    return out


def fleet_from_plan(path: str | Path, catalog: Catalog) -> Fleet:
    doc = load_plan_json(path)
    data = targets()
    pools: dict[str, dict[str, Any]] = _plan_pools(doc, str(path), catalog) if doc["schema"] == PLAN_SCHEMA else {}
    for op, p, where in _placements(doc, str(path)) if doc["schema"] != PLAN_SCHEMA else []:
        try:
            device = catalog.device(str(p["device"])).name
            tp, pp, replicas = int(p.get("tp", 1)), int(p.get("pp", 1)), int(p.get("replicas", 1))
        except KeyError as exc:
            raise DeployError(f"{path}: {where}.{exc.args[0]}: missing; re-plan with `terrazzo plan ... -o`"
                              ) from None
        except CatalogError as exc:
            raise DeployError(f"{path}: {where}.device: {exc}") from None
        except (TypeError, ValueError):
            raise DeployError(f"{path}: {where}: tp, pp and replicas must be integers") from None
        if min(tp, pp, replicas) < 1:
            raise DeployError(f"{path}: {where}: tp, pp and replicas must be at least 1")
        pool = str(p.get("pool") or f"{device}-tp{tp}-pp{pp}")
        entry = pools.setdefault(pool, {"device": device, "tp": tp, "pp": pp, "replicas": 0, "ops": []})
        if (entry["device"], entry["tp"], entry["pp"]) != (device, tp, pp):
            raise DeployError(f"{path}: {where}.pool: pool '{pool}' mixes device configurations; "
                              "pools are named <device>-tp<N>-pp<M> by the planner")
        entry["replicas"] = max(entry["replicas"], replicas)  # ops of one pool share its replicas
        entry["ops"].append(op)
    by_device: dict[str, list[PoolNeed]] = {}
    for name, e in pools.items():
        by_device.setdefault(e["device"], []).append(
            PoolNeed(name, e["device"], e["tp"], e["pp"], e["replicas"], tuple(e["ops"])))
    groups = []
    for device, needs in sorted(by_device.items()):
        dev = catalog.device(device)
        spec = data["devices"].get(device)
        if spec is None:
            raise DeployError(f"terrazzo/deploy/data/targets.yaml: devices: no entry for '{device}' (used by "
                              f"{path}); add its per-node count with a source")
        vendor = data["vendors"].get(dev.vendor, {}) if dev.kind != "cpu" else {}
        if dev.kind != "cpu" and not vendor:
            raise DeployError(f"terrazzo/deploy/data/targets.yaml: vendors: no entry for '{dev.vendor}' "
                              f"(device '{device}'); add its Kubernetes device-plugin resource with a source")
        for need in needs:
            if need.tp > spec["per_node"]:
                raise DeployError(f"{path}: pool '{need.pool}': tensor parallelism {need.tp} exceeds the "
                                  f"{spec['per_node']} {device} of one node; a TP group must share a node")
        cores = int(dev.cores.value) if dev.cores else 1
        groups.append(DeviceGroup(
            device, dev.vendor, dev.kind, int(spec["per_node"]), cores * int(spec["per_node"]) if dev.kind == "cpu"
            else 0, tuple(needs), vendor.get("k8s_resource"), vendor.get("node_label"),
            bool(vendor.get("ray_gpus")), spec.get("aws"), "; ".join(filter(None, [spec["source"],
                                                                                   vendor.get("source")]))))
    return Fleet(str(doc.get("agent") or Path(path).stem), str(path), doc, tuple(groups), data["head"],
                 data["fill_in"])
