"""Generated files checked against real schemas before anyone applies them: the Ray launcher config
against the schema Ray ships (ray/autoscaler/ray-schema.json); Kubernetes core objects against the
official OpenAPI-derived JSON schemas kubernetes-validate ships (strict: unknown fields fail); the
RayCluster against terrazzo's schema of the fields it writes, whose pod templates refer to those same
Kubernetes definitions; plus the cross-field rules a schema cannot say (min ≤ replicas ≤ max)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from terrazzo.errors import DeployError

K8S_VERSION = "1.37"


def ray_config_errors(config: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = _ray_schema()
    validator = jsonschema.Draft7Validator(schema)
    return [_where(e) for e in validator.iter_errors(config)]


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    if doc.get("kind") == "RayCluster":
        return _raycluster_errors(doc)
    try:
        import kubernetes_validate
    except ImportError:
        raise DeployError("kubernetes-validate is not installed: pip install 'terrazzo[runtime]'") from None
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [_where(exc)]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def _raycluster_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_raycluster_schema(), registry=_k8s_registry())
    out = [_where(e) for e in validator.iter_errors(doc)]
    groups = doc.get("spec", {}).get("workerGroupSpecs", [])
    names = [g.get("groupName") for g in groups]
    out += [f"spec.workerGroupSpecs: group name '{n}' is used twice" for n in set(names) if names.count(n) > 1]
    for i, g in enumerate(groups):
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
        if isinstance(lo, int) and isinstance(n, int) and isinstance(hi, int) and not lo <= n <= hi:
            out.append(f"spec.workerGroupSpecs[{i}]: needs minReplicas ≤ replicas ≤ maxReplicas, got {lo}, {n}, {hi}")
    return out


def _where(err: Any) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "(top)"
    return f"{path}: {err.message}"


@cache
def _ray_schema() -> dict[str, Any]:
    try:
        text = resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text()
    except ModuleNotFoundError:
        raise DeployError("ray is not installed, so its cluster schema is missing: pip install 'terrazzo[runtime]'"
                          ) from None
    return json.loads(text)


@cache
def _raycluster_schema() -> dict[str, Any]:
    return json.loads(resources.files("terrazzo.deploy").joinpath("data/raycluster.schema.json").read_text())


@cache
def _k8s_registry() -> Any:
    from referencing import Registry, Resource

    try:
        base = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    except ModuleNotFoundError:
        raise DeployError("kubernetes-validate is not installed: pip install 'terrazzo[runtime]'") from None
    defs = json.loads(base.joinpath(f"v{K8S_VERSION}.0-local-strict/_definitions.json").read_text())
    return Resource.from_contents(defs) @ Registry()
