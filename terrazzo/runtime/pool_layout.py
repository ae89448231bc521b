"""Read a plan (terrazzo.plan/v2) or bare placement (terrazzo.placement/v1) into what the runtime
needs: for each granular op its pool (the one carrying its largest share), the shares of a split op for
the router, device label and predicted latency, and each pool's size as the plan's pools state it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.plan_file import PLACEMENT_SCHEMA, PLAN_SCHEMA, PoolEntry, op_shares, plan_pools, read_plan_json
from terrazzo.runtime.failures import ExecutionError

DEFAULT_POOL = "cpu-default"


@dataclass(frozen=True)
class OpPlacement:
    op: str
    pool: str
    device: str
    replicas: int = 1
    predicted_s: float | None = None   # the plan's latency per visit, when the plan has one
    kind: str = ""
    devices: int = 1                   # devices one replica spans (tp × pp)
    engine: str = ""                   # the serving engine the plan names for the op's pool ("" : unnamed)
    tp: int = 1
    pp: int = 1
    batch: int = 1                     # planned batch per replica
    shares: tuple[tuple[str, float], ...] = ()  # a split op: (pool, share) for the router; () when on one pool


@dataclass(frozen=True)
class PoolSpec:
    name: str
    device: str
    workers: int
    ops: tuple[str, ...] = ()
    devices_per_worker: int = 1  # tp × pp: the `tz/<device>` units one worker claims on a Ray node
    engine: str = ""             # the plan's engine for the pool ("": unnamed, the run config decides)
    tp: int = 1
    pp: int = 1
    batch: int = 1

    @property
    def resource(self) -> str:
        """Ray custom resource naming the device type, so a cluster places the pool on matching nodes."""
        return f"tz/{self.device}"


@dataclass
class RuntimePlan:
    agent: str | None
    ops: dict[str, OpPlacement]
    source: str = "<none>"
    notes: list[str] = field(default_factory=list)
    plan_pools: dict[str, PoolEntry] = field(default_factory=dict)  # a v2 plan's pools, as sized by the planner

    def placement(self, op: str) -> OpPlacement:
        """The op's placement; ops the plan does not name run on the default CPU pool (noted once)."""
        found = self.ops.get(op)
        if found is None:
            found = self.ops[op] = OpPlacement(op, DEFAULT_POOL, "cpu")
            self.notes.append(f"op '{op}' is not in the plan; it runs on pool '{DEFAULT_POOL}'")
        return found

    def has(self, op: str) -> bool:
        return op in self.ops

    def pools(self, min_workers: int, max_workers: int, extra_ops: Sequence[str] = ()) -> dict[str, PoolSpec]:
        """One worker pool per plan pool; workers = the plan's replicas clamped to [min, max] (this
        machine cannot host 31 replicas; placement labels stay what the plan says)."""
        for op in extra_ops:
            self.placement(op)
        groups: dict[str, list[OpPlacement]] = {}
        for p in self.ops.values():
            groups.setdefault(p.pool, []).append(p)
        out = {}
        for name, ops in groups.items():
            devices = {p.device for p in ops}
            if len(devices) > 1:
                raise ExecutionError(f"plan pool '{name}' mixes device types {sorted(devices)}",
                                     fix="give each pool one device type (re-run terrazzo plan)")
            planned = self.plan_pools.get(name)
            want = planned.replicas if planned else max(p.replicas for p in ops)
            if planned is not None:
                serving = (planned.engine, planned.tp, planned.pp, planned.batch)
            else:
                serving = (next((p.engine for p in ops if p.engine), ""), max(p.tp for p in ops),
                           max(p.pp for p in ops), max(p.batch for p in ops))
            out[name] = PoolSpec(name, devices.pop(), max(min_workers, min(want, max_workers)),
                                 tuple(p.op for p in ops), planned.devices_per_replica if planned
                                 else max(p.devices for p in ops), *serving)
        return out


def load_plan(path: str | Path | None) -> RuntimePlan:
    """Accept a plan JSON (ops with predictions) or a placement JSON (placements only); None: empty plan."""
    if path is None:
        return RuntimePlan(None, {})
    p = Path(path)
    data = read_plan_json(p, ExecutionError)
    schema = data.get("schema")
    ops: dict[str, OpPlacement] = {}
    pools: dict[str, PoolEntry] = {}
    if str(schema).startswith("terrazzo.plan/"):  # v2, or an older one refused with how to re-plan
        pools = {q.name: q for q in plan_pools(data, str(p), _PlanFileError)}
        kinds = {o["name"]: o for o in data.get("ops", []) if isinstance(o, dict) and "name" in o}
        for op, placed in op_shares(list(pools.values())).items():
            main, _ = max(placed, key=lambda x: x[1])
            o = kinds.get(op, {})
            ops[op] = OpPlacement(op, main.name, main.device, main.replicas,
                                  float(o["latency_s"]) if o.get("latency_s") is not None else None,
                                  o.get("kind", ""), main.devices_per_replica, main.engine, main.tp, main.pp,
                                  main.batch, tuple((q.name, share) for q, share in placed) if len(placed) > 1 else ())
    elif schema == PLACEMENT_SCHEMA:
        where = "placements"
        try:  # types and ranges are checked by read_plan_json; here only presence of what the runtime needs
            for name, o in (data.get("placements") or {}).items():
                where = f"placements.{name}"
                ops[name] = OpPlacement(name, o["pool"], o["device"], int(o.get("replicas", 1)), devices=_span(o),
                                        **_serving(o))
        except KeyError as exc:
            raise ExecutionError(f"plan '{p}': {where}.{exc.args[0]}: missing",
                                 fix="re-plan with `terrazzo plan ... -o`, which writes every field") from None
        except (TypeError, AttributeError) as exc:
            raise ExecutionError(f"plan '{p}': {where}: malformed ({exc})",
                                 fix="re-plan with `terrazzo plan ... -o`") from None
    else:
        raise ExecutionError(f"plan '{p}' has schema {schema!r}",
                             fix=f"use a {PLAN_SCHEMA} or {PLACEMENT_SCHEMA} file (terrazzo plan -o)")
    return RuntimePlan(data.get("agent"), ops, str(p), plan_pools=pools)


class _PlanFileError(ExecutionError):
    def __init__(self, message: str) -> None:  # plan_file's messages carry their own fix
        super().__init__(message)


def _serving(o: dict[str, Any]) -> dict[str, Any]:
    """How the op's pool serves it: engine, parallelism and planned batch (what an engine is launched with)."""
    return {"engine": str(o.get("engine") or ""), "tp": int(o.get("tp", 1)), "pp": int(o.get("pp", 1)),
            "batch": int(o.get("batch", 1))}


def _span(o: dict[str, Any]) -> int:
    return max(1, int(o.get("tp", 1)) * int(o.get("pp", 1)))
