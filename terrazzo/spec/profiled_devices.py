"""A device that a measured profile defines (`terrazzo profile -o me.yaml` names this machine, e.g.
`local-cpu`) joins the cluster it is planned on, so `--profile` changes what the planner may choose
without editing the cluster file; where the cluster's mode fixes its devices, a note says how to add it."""

from __future__ import annotations

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.spec.cluster import Cluster


def with_profiled_devices(cluster: Cluster, catalog: Catalog) -> tuple[Cluster, list[str]]:
    """The cluster with each profile-defined device it lacks added (unconstrained: to `devices`;
    own-and-buy: to `buy`); for an inventory, unchanged, with a note on the line to add."""
    defined = [c.device for c in catalog.profiles if c.defines_device]
    missing = [d for d in dict.fromkeys(defined) if d not in cluster.device_types]
    notes: list[str] = []
    for name in missing:
        if cluster.mode == "inventory":
            notes.append(f"profile: device '{name}' is defined by the profile but is not in this inventory "
                         f"cluster; add `{name}: 1` under `inventory:` in the cluster file to let the planner use it")
            continue
        key = "buy" if cluster.mode == "own-and-buy" else "devices"
        cluster = cluster.model_copy(update={key: [*getattr(cluster, key), name]})
        notes.append(f"profile: added device '{name}' (measured) to the cluster's {key} for this plan; list it "
                     f"under `{key}:` in the cluster file to keep it")
    return cluster, notes
