"""Read a plan (terrazzo.plan/v1) or bare placement (terrazzo.placement/v1) into what the runtime
needs: for each granular op its pool, device label and predicted latency, and each pool's size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.plan_file import PLACEMENT_SCHEMA, PLAN_SCHEMA, read_plan_json
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
            want = max(p.replicas for p in ops)
            engine = next((p.engine for p in ops if p.engine), "")
            out[name] = PoolSpec(name, devices.pop(), max(min_workers, min(want, max_workers)),
                                 tuple(p.op for p in ops), max(p.devices for p in ops), engine,
                                 max(p.tp for p in ops), max(p.pp for p in ops), max(p.batch for p in ops))
        return out


def load_plan(path: str | Path | None) -> RuntimePlan:
    """Accept a plan JSON (ops with predictions) or a placement JSON (placements only); None: empty plan."""
    if path is None:
        return RuntimePlan(None, {})
    p = Path(path)
    data = read_plan_json(p, ExecutionError)
    schema = data.get("schema")
    ops: dict[str, OpPlacement] = {}
    where = "ops"
    try:  # types and ranges are checked by read_plan_json; here only presence of what the runtime needs
        if schema == PLAN_SCHEMA:
            for i, o in enumerate(data.get("ops") or []):
                where = f"ops[{i}]"
                ops[o["name"]] = OpPlacement(o["name"], o["pool"], o["device"], int(o.get("replicas", 1)),
                                             float(o["latency_s"]) if o.get("latency_s") is not None else None,
                                             o.get("kind", ""), _span(o), **_serving(o))
        elif schema == PLACEMENT_SCHEMA:
            for name, o in (data.get("placements") or {}).items():
                where = f"placements.{name}"
                ops[name] = OpPlacement(name, o["pool"], o["device"], int(o.get("replicas", 1)), devices=_span(o),
                                        **_serving(o))
        else:
            raise ExecutionError(f"plan '{p}' has schema {schema!r}",
                                 fix=f"use a {PLAN_SCHEMA} or {PLACEMENT_SCHEMA} file (terrazzo plan -o)")
    except KeyError as exc:
        raise ExecutionError(f"plan '{p}': {where}.{exc.args[0]}: missing",
                             fix="re-plan with `terrazzo plan ... -o`, which writes every field") from None
    except (TypeError, AttributeError) as exc:
        raise ExecutionError(f"plan '{p}': {where}: malformed ({exc})",
                             fix="re-plan with `terrazzo plan ... -o`") from None
    return RuntimePlan(data.get("agent"), ops, str(p))


def _serving(o: dict[str, Any]) -> dict[str, Any]:
    """How the op's pool serves it: engine, parallelism and planned batch (what an engine is launched with)."""
    return {"engine": str(o.get("engine") or ""), "tp": int(o.get("tp", 1)), "pp": int(o.get("pp", 1)),
            "batch": int(o.get("batch", 1))}


def _span(o: dict[str, Any]) -> int:
    return max(1, int(o.get("tp", 1)) * int(o.get("pp", 1)))
