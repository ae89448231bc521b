"""`terrazzo compile AGENT --emit vmfb --target T [--plan P] -o DIR`: the agent's tensor operators
compiled for a target family, copied out of the cache, with a manifest naming which artifact serves
each plan pool (by the pool's device type)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.codegen.compile import EMBED_BUCKETS, Artifact, Operator, Target, compile_operator, parse_target
from terrazzo.codegen.compile import target_for_device as device_target
from terrazzo.codegen.operators import embed_operator, pii_operator
from terrazzo.errors import CodegenError
from terrazzo.plan_file import ARTIFACTS_SCHEMA, read_plan_json

ENCODER_MODELS = ("all-minilm-l6-v2",)  # catalog models whose weights ship with the runtime extra
PII_FUNCTION = "terrazzo.runtime.executors.classifier:pii_filter"


@dataclass(frozen=True)
class Emitted:
    manifest: Path | None  # None: nothing was needed, so nothing was written
    artifacts: list[Artifact]
    pools: dict[str, list[str]]
    skipped: list[str]


def agent_operators(agent: Any) -> dict[str, list[Operator]]:
    """Node path → the operators it runs: an embedding model's buckets, or the privacy filter."""
    out: dict[str, list[Operator]] = {}
    for path, node in agent.graph.leaves():
        model = getattr(node, "model", None) if node.kind == "embed" else getattr(node, "embed_model", None)
        if node.kind in ("embed", "memory_lookup") and model in ENCODER_MODELS:
            out[path] = [embed_operator(b, s) for b, s in EMBED_BUCKETS]
        elif node.kind == "compute" and getattr(node, "function", None) == PII_FUNCTION:
            out[path] = [pii_operator(1), pii_operator(32)]
    return out


def emit_vmfb(agent_path: str | Path, target: str, out_dir: str | Path, plan_path: str | Path | None = None,
              root: str | Path | None = None, say: Callable[[str], None] = lambda _: None) -> Emitted:
    """Compile the agent's tensor operators for `target` into `out_dir`. With a plan, only when a pool that
    runs one of them is of the target's family; otherwise (and for an agent with no tensor operator) nothing
    is compiled or written, and `skipped` says why. `say` hears each compile as it starts."""
    from terrazzo.spec.spec_loader import load_agent

    agent = load_agent(agent_path)
    ops = agent_operators(agent)
    if not ops:
        return Emitted(None, [], {}, [
            f"{agent_path}: no node runs a tensor operator terrazzo lowers (embed or memory_lookup with "
            f"{', '.join(ENCODER_MODELS)}, or a compute node with function {PII_FUNCTION}); nothing to compile, "
            "nothing written"])
    wanted = parse_target(target)
    family = wanted[0].family
    placements = _placements(plan_path) if plan_path else {}
    pool_targets = {pool: device_target(dev) for pool, (dev, _) in placements.items()}
    if plan_path:
        hosting = {pool: dev for pool, (dev, nodes) in placements.items() if any(n in ops for n in nodes)}
        if not any((t := pool_targets[p]) is not None and t.family == family for p in hosting):
            where = ", ".join(f"{p} ({d}: {t.family if (t := pool_targets[p]) else 'no IREE backend'})"
                              for p, d in hosting.items()) or "no pool"
            return Emitted(None, [], {}, [
                f"the plan needs no {family} artifact: its tensor operators run on {where}; nothing compiled, "
                f"nothing written. Pass the family of those pools to --target, or drop --plan to compile anyway"])
    extra = [t for t in pool_targets.values() if t is not None and t.family == family and t not in wanted]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built: dict[tuple[str, tuple, Target], Artifact] = {}
    for node_ops in ops.values():
        for op in node_ops:
            for t in dict.fromkeys([*wanted, *extra]):
                if (op.name, op.shapes, t) not in built:
                    say(f"compiling {op.name} {list(op.shapes)} for {t.name} ...")
                    art = compile_operator(op, t, root)
                    shutil.copyfile(art.path, out / art.path.name)
                    built[op.name, op.shapes, t] = art
    pools: dict[str, list[str]] = {}
    skipped = []
    for pool, (device, nodes) in placements.items():
        pool_target = pool_targets[pool]
        names = [a.path.name for (name, _, tt), a in built.items()
                 if tt == pool_target and any(name in {o.name for o in ops.get(n, [])} for n in nodes)]
        if names:
            pools[pool] = sorted(names)
        elif any(n in ops for n in nodes):
            why = "no IREE backend" if pool_target is None else f"its target {pool_target.name} is not {family}"
            skipped.append(f"pool {pool} ({device}): {why}; it keeps the PyTorch path")
    artifacts = list(built.values())
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"schema": ARTIFACTS_SCHEMA, "agent": agent.name,
                                    "artifacts": [a.to_json() for a in artifacts], "pools": pools,
                                    "notes": skipped}, indent=2))
    return Emitted(manifest, artifacts, pools, skipped)


def _placements(plan_path: str | Path) -> dict[str, tuple[str, set[str]]]:
    """Pool → (device type, node paths of the ops placed on it)."""
    doc = read_plan_json(plan_path, CodegenError)
    rows = doc.get("ops") or [{"name": k, **v} for k, v in doc.get("placements", {}).items()]
    out: dict[str, tuple[str, set[str]]] = {}
    for r in rows:
        try:
            pool, device, name = r["pool"], r["device"], r["name"]
        except KeyError as exc:
            raise CodegenError(f"{plan_path}: an op lacks '{exc.args[0]}'; re-plan with `terrazzo plan -o`") from None
        node = r.get("node") or name.rsplit(".", 1)[0]
        out.setdefault(pool, (device, set()))[1].update({node, name.rsplit(".", 1)[0]})
    return out
