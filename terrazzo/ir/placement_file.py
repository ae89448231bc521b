"""Placement files: the planner's decisions in a small versioned JSON format that apply-plan reads.

    {"schema": "terrazzo.placement/v1",
     "placements": {"think.prefill": {"device": "h100-sxm", "tp": 2, "pp": 1, "batch": 4, "replicas": 3,
                                      "pool": "prefill-h100"}, ...}}

Keys are op ids (`terrazzo compile --emit estimated` lists them) or coarser names the planner uses: a node
id places every op made from that node, `<node>.aggregated` puts an LLM call's phases on the same replicas.
tp, pp, batch and replicas default to 1 and pool to the device name; ops in one pool share its devices, so
they must name the same device. A planner result (`terrazzo.plan/v2`) is read through its `placement` field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from xdsl.dialects.builtin import ModuleOp

from terrazzo.errors import IRError
from terrazzo.ir.dialects.node_op import NodeOp
from terrazzo.plan_file import PLACEMENT_SCHEMA as SCHEMA
from terrazzo.plan_file import PLAN_SCHEMA, PLAN_SCHEMA_V1


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1)
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    batch: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=1)
    pool: str | None = Field(default=None, min_length=1)

    @property
    def pool_name(self) -> str:
        return self.pool or self.device


class PlacementFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["terrazzo.placement/v1"] = Field(default=SCHEMA, alias="schema")
    placements: dict[str, Placement]
    path: str = Field(default="the placement file", exclude=True, description="where it was read from, for messages")

    def dumps(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), indent=2) + "\n"


def load_placements(path: str | Path) -> PlacementFile:
    """Read and validate a placement file; every failure names the file, the entry and the fix."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise IRError(f"cannot read placement file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise IRError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if isinstance(data, dict) and data.get("schema") in (PLAN_SCHEMA, PLAN_SCHEMA_V1):
        data = data.get("placement")  # only its placement object is read, whose own schema is unchanged
        if not isinstance(data, dict):
            raise IRError(f"{path}: a {PLAN_SCHEMA} file needs a 'placement' object ({SCHEMA}); re-run terrazzo plan")
    if isinstance(data, dict) and data.get("schema") != SCHEMA:
        raise IRError(f"{path}: schema is {data.get('schema')!r}; this terrazzo reads '{SCHEMA}' (or a "
                      f"'{PLAN_SCHEMA}' result); write \"schema\": \"{SCHEMA}\" at the top")
    try:
        return PlacementFile.model_validate(data).model_copy(update={"path": str(path)})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise IRError(f"{path}: {where}: {err['msg']}; fields are device, tp, pp, batch, replicas, pool") from None


def cheapest_plan(module: ModuleOp) -> PlacementFile:
    """Per op, its cheapest feasible candidate per request, in a pool per device and LLM phase.

    A baseline that ignores end-to-end latency and transfers (the planner's MILP does not); handy to try
    apply-plan and partition on an estimated module. Ops without a feasible candidate are left out.
    """
    out: dict[str, Placement] = {}
    for op in module.walk():
        if not isinstance(op, NodeOp):
            continue
        ok = [c for c in op.candidates if c.feasible]
        if not ok:
            continue
        best = min(ok, key=lambda c: (c.usd_per_request, c.latency_s.data))
        role = op.node_id.rsplit(".", 1)[1] if op.node_id.endswith((".prefill", ".decode")) else ""
        device = best.device.data
        out[op.node_id] = Placement(device=device, tp=best.tp.data, pp=best.pp.data, batch=best.batch.data,
                                    pool=f"{role}-{device}" if role else device)
    return PlacementFile(placements=out)

