"""The plan-file formats and reading them back: the schema names every layer writes or checks, and one
place for the checks and messages every consumer (simulator, runtime, deployment, code generation) needs,
raised as the caller's own layer's exception type.

- `terrazzo.plan/v2`: the planner's result (`terrazzo plan -o`). Pools are the unit: each names its
  device, parallelism, engine and engine version, replicas, and the ops it serves with their shares.
  Its `ops` list each op's placements (pool and share) and its `placement` the IR's view. See
  docs/plan-format.md.
- `terrazzo.placement/v1`: bare placements, what the IR's apply-plan pass reads.
- `terrazzo.artifacts/v1`: the manifest `compile --emit vmfb` writes and `deploy` reads.

`terrazzo.plan/v1` files (each op priced with replicas of its own) are refused with a message saying
how to re-plan: their pools cannot be recovered without re-sizing them, which is the planner's job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

PLAN_SCHEMA: Final = "terrazzo.plan/v2"
PLAN_SCHEMA_V1: Final = "terrazzo.plan/v1"
PLACEMENT_SCHEMA: Final = "terrazzo.placement/v1"
ARTIFACTS_SCHEMA: Final = "terrazzo.artifacts/v1"

# Optional pool fields other parts of terrazzo may write, and who owns each. A reader keeps any field it
# does not know (declared here or not) verbatim in `PoolEntry.extra` and writes it back unchanged.
OPTIONAL_POOL_FIELDS: dict[str, str] = {
    "scheduler": "simulator: the engine scheduler the pool runs (chunked prefill, token budget, preemption)",
    "cost_uncertainty": "cost model: quantiles of the per-replica estimate (cross-validated residuals)",
    "kv": "KV residency: prefix cache, pinning and tiers of the pool",
    "decision": "decisions: keep-or-buy and day-plan choices made for the pool",
    "routing": "runtime router settings beyond the shares (affinity, least-loaded)",
}
ROLES = ("shared", "prefill", "decode", "aggregated", "moe")
# An LLM op entry's optional `kv` (prefix reuse, plan/kv_candidates.py writes it; absent = recompute):
# {"policy", "prefix_tokens", "new_tokens", "hold_s", "hit_rate", "saving_usd_h"} (+ "tier", "transfer_s", "edge").
KV_POLICIES = ("retain", "host", "disk", "recompute")
KV_NUMBERS = ("prefix_tokens", "new_tokens", "hold_s", "hit_rate")


@dataclass(frozen=True)
class PoolMember:
    op: str
    share: float  # of the op's demand
    load: float = 0.0  # replica-equivalents of busy time this share puts on the pool

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "share": self.share, "load": self.load}


@dataclass(frozen=True)
class PoolEntry:
    """One pool of a v2 plan: `replicas` replicas of `devices_per_replica` devices (tp × pp) of
    `device`, running `engine` (a terrazzo.catalog.engines.Engine value) at `engine_version`, with
    `batch` sequences per lane. `role` is `shared` (non-LLM ops) or the LLM phase it serves."""

    name: str
    device: str
    tp: int
    pp: int
    engine: str
    replicas: int
    ops: tuple[PoolMember, ...]
    engine_version: str = ""
    batch: int = 1
    role: str = "shared"
    usd_h_per_replica: float = 0.0
    model: str | None = None
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def devices_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def devices(self) -> int:
        return self.replicas * self.devices_per_replica

    @property
    def usd_h(self) -> float:
        return self.replicas * self.usd_h_per_replica

    @property
    def load(self) -> float:
        return sum(m.load for m in self.ops)

    def to_json(self) -> dict[str, Any]:
        doc = {"name": self.name, "device": self.device, "tp": self.tp, "pp": self.pp, "engine": self.engine,
               "engine_version": self.engine_version, "batch": self.batch, "role": self.role,
               "model": self.model, "dtype": self.dtype, "replicas": self.replicas,
               "devices_per_replica": self.devices_per_replica, "devices": self.devices,
               "usd_h_per_replica": self.usd_h_per_replica, "usd_h": self.usd_h, "load": self.load,
               "utilisation": self.load / self.replicas if self.replicas else 0.0,
               "ops": [m.to_json() for m in self.ops]}
        return {**doc, **self.extra}

    @classmethod
    def from_json(cls, d: Any, where: str, error: type[Exception]) -> PoolEntry:
        """Read one pool entry; `error(message)` names the field and the fix."""
        if not isinstance(d, dict):
            raise error(f"{where}: expected an object, got {type(d).__name__}; re-plan with `terrazzo plan -o`")

        def need(key: str, kind: type, minimum: float | None = None) -> Any:
            if key not in d:
                raise error(f"{where}.{key}: missing; re-plan with `terrazzo plan ... -o` (writes {PLAN_SCHEMA})")
            v = d[key]
            try:
                v = kind(v)
            except (TypeError, ValueError):
                raise error(f"{where}.{key}: expected {kind.__name__}, got {d[key]!r}") from None
            if minimum is not None and v < minimum:
                raise error(f"{where}.{key}: must be at least {minimum:g}, got {v}")
            return v

        ops = d.get("ops")
        if not isinstance(ops, list) or not ops:
            raise error(f"{where}.ops: a pool must serve at least one op (a list of {{op, share}})")
        members = []
        for i, m in enumerate(ops):
            if not isinstance(m, dict) or "op" not in m or "share" not in m:
                raise error(f"{where}.ops[{i}]: expected {{\"op\": NAME, \"share\": FRACTION}}")
            try:
                share, load = float(m["share"]), float(m.get("load", 0.0))
            except (TypeError, ValueError):
                raise error(f"{where}.ops[{i}].share: expected a number in (0, 1], got {m['share']!r}") from None
            if not 0 < share <= 1 + 1e-9 or not math.isfinite(load):
                raise error(f"{where}.ops[{i}].share: must be in (0, 1], got {share:g}")
            members.append(PoolMember(str(m["op"]), share, load))
        role = str(d.get("role", "shared"))
        if role not in ROLES:
            raise error(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
        known = {"name", "device", "tp", "pp", "engine", "engine_version", "batch", "role", "model", "dtype",
                 "replicas", "devices_per_replica", "devices", "usd_h_per_replica", "usd_h", "load", "utilisation",
                 "ops"}
        return cls(need("name", str), need("device", str), need("tp", int, 1), need("pp", int, 1),
                   str(d.get("engine", "builtin")), need("replicas", int, 1), tuple(members),
                   str(d.get("engine_version", "") or ""), int(d.get("batch", 1) or 1), role,
                   float(d.get("usd_h_per_replica", 0.0) or 0.0), d.get("model"), d.get("dtype"),
                   {k: v for k, v in d.items() if k not in known})


def read_plan_json(path: str | Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in `path`, or `error(message)` saying how to write one."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such plan file; write one with `terrazzo plan ... -o {p}`")
    try:
        text = p.read_text()
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read it ({exc}); pass a plan written by `terrazzo plan -o`") from None
    except json.JSONDecodeError as exc:
        raise error(f"{p}:{exc.lineno}: not JSON ({exc.msg}); pass a plan written by `terrazzo plan -o`") from None
    except RecursionError:
        raise error(f"{p}: nests too deeply to be a plan; pass a plan written by `terrazzo plan -o`") from None
    if not isinstance(doc, dict):
        raise error(f"{p}: expected a JSON object, got {type(doc).__name__}; pass a plan written by `terrazzo plan -o`")
    from terrazzo.plan_checks import plan_problem

    if (problem := plan_problem(doc, text, str(p))) is not None:
        raise error(problem)
    return doc


def refuse_old(doc: dict[str, Any], where: str, error: type[Exception]) -> None:
    """Refuse a v1 plan (or any unknown plan schema) with the command that writes a v2 one."""
    schema = doc.get("schema")
    if schema == PLAN_SCHEMA_V1:
        raise error(f"{where}: schema: {PLAN_SCHEMA_V1} files price each op's replicas apart, not its pools; "
                    f"re-plan with `terrazzo plan AGENT --workload W --sla S --cluster C -o {Path(where).name}` "
                    f"(writes {PLAN_SCHEMA})")


def plan_pools(doc: dict[str, Any], where: str, error: type[Exception]) -> list[PoolEntry]:
    """The pools of a v2 plan, each checked; ops must agree with the pools that name them."""
    refuse_old(doc, where, error)
    if doc.get("schema") != PLAN_SCHEMA:
        raise error(f"{where}: schema: expected {PLAN_SCHEMA}, got {doc.get('schema')!r}; write the plan with "
                    f"`terrazzo plan ... -o`")
    pools = doc.get("pools")
    if not isinstance(pools, list) or not pools:
        raise error(f"{where}: pools: the plan has no pools; re-plan with `terrazzo plan ... -o`")
    out = [PoolEntry.from_json(p, f"{where}: pools[{i}]", error) for i, p in enumerate(pools)]
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise error(f"{where}: pools: names must be unique, {', '.join(dup)} repeats")
    totals: dict[str, float] = {}
    for p in out:
        for m in p.ops:
            totals[m.op] = totals.get(m.op, 0.0) + m.share
    bad = {op: t for op, t in totals.items() if abs(t - 1.0) > 1e-6}
    if bad:
        op, t = next(iter(bad.items()))
        raise error(f"{where}: pools: op '{op}' has shares summing to {t:.6g} over its pools, not 1")
    return out


def op_shares(pools: list[PoolEntry]) -> dict[str, list[tuple[PoolEntry, float]]]:
    """op → [(pool, share)] in pool order."""
    out: dict[str, list[tuple[PoolEntry, float]]] = {}
    for p in pools:
        for m in p.ops:
            out.setdefault(m.op, []).append((p, m.share))
    return out


def op_kv(op: Any, where: str, error: type[Exception]) -> dict[str, Any] | None:
    """An op entry's `kv` reuse entry, checked (None when absent: the op recomputes its prefix)."""
    kv = op.get("kv") if isinstance(op, dict) else None
    if kv is None:
        return None
    if not isinstance(kv, dict):
        raise error(f"{where}.kv: expected an object {{policy, prefix_tokens, ...}}, got {type(kv).__name__}")
    if kv.get("policy") not in KV_POLICIES:
        raise error(f"{where}.kv.policy: expected one of {', '.join(KV_POLICIES)}, got {kv.get('policy')!r}; "
                    "re-plan with `terrazzo plan ... -o`")
    for k in KV_NUMBERS:
        v = kv.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 or (
                k == "hit_rate" and v > 1):
            raise error(f"{where}.kv.{k}: expected a number ≥ 0{' and ≤ 1' if k == 'hit_rate' else ''}, got {v!r}")
    saving = kv.get("saving_usd_h")
    if saving is not None and (not isinstance(saving, (int, float)) or isinstance(saving, bool)):
        raise error(f"{where}.kv.saving_usd_h: expected a number or null, got {saving!r}")
    return kv


def op_kv_policies(doc: dict[str, Any], where: str, error: type[Exception]) -> dict[str, str]:
    """op name → its KV policy, for every op of the plan with a `kv` entry."""
    out = {}
    for i, op in enumerate(doc.get("ops") or []):
        kv = op_kv(op, f"{where}: ops[{i}]", error)
        if kv is not None and isinstance(op, dict):
            out[str(op.get("name"))] = str(kv["policy"])
    return out
