"""`terrazzo compile`: an agent YAML (or terrazzo's own MLIR text) through the pass pipeline to MLIR text.

Stages, each the previous one plus passes:
  agent        the frontend's output, one op per spec node
  granular     + decompose-llm, decompose-moe, decompose-tools, decompose-memory
  estimated    + estimate-cost
  placed       + apply-plan, verify-placement
  partitioned  + partition
`pipeline` replaces the stage's passes. A `.mlir` input is parsed, verified and brought to the stage the same
way: the decompositions and partition change nothing the text has already been through, and estimate-cost
and apply-plan are skipped when its ops already carry candidates or placements and no --cluster or --plan
asks for new ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import parse_spec
from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException

from terrazzo.catalog.load import load_catalog
from terrazzo.errors import TerrazzoError
from terrazzo.ir.context import make_context, parse_module, print_module, verify
from terrazzo.ir.dialects.base import CANDIDATES, PLACE
from terrazzo.ir.errors import IRError
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.passes import PASSES
from terrazzo.spec.load import load_agent, load_cluster

DECOMPOSE = ["decompose-llm", "decompose-moe", "decompose-tools", "decompose-memory"]
STAGES: dict[str, list[str]] = {
    "agent": [],
    "granular": DECOMPOSE,
    "estimated": [*DECOMPOSE, "estimate-cost"],
    "placed": [*DECOMPOSE, "estimate-cost", "apply-plan", "verify-placement"],
    "partitioned": [*DECOMPOSE, "estimate-cost", "apply-plan", "verify-placement", "partition"],
}


def make_pass(entry: str, cluster: str | None = None, plan: str | None = None, sla: str | None = None) -> ModulePass:
    """A pass from `name` or `name{option=value ...}`; cluster/plan/sla fill the options the entry leaves unset."""
    try:
        spec = parse_spec(entry.strip())
    except ArgSpecParseError as exc:
        raise IRError(f"bad pass spec {entry!r}: {exc}") from None
    cls = PASSES.get(spec.name)
    if cls is None:
        raise IRError(f"unknown pass {spec.name!r}; passes are {', '.join(PASSES)}")
    try:
        instance = cls.from_spec(spec)
    except Exception as exc:  # xDSL raises plain exceptions for bad options
        raise IRError(f"bad options for {spec.name}: {exc}") from None
    fill = {k: v for k, v in (("cluster", cluster), ("plan", plan), ("sla", sla))
            if v is not None and hasattr(instance, k) and getattr(instance, k) is None}
    return dataclasses.replace(instance, **fill) if fill else instance


def run_pipeline(module: ModuleOp, passes: Sequence[ModulePass],
                 after_each: Callable[[str, ModuleOp], None] | None = None) -> ModuleOp:
    """Run `passes` in order, verifying the module after each; errors name the pass."""
    ctx = make_context()
    for p in passes:
        try:
            p.apply(ctx, module)
        except TerrazzoError as exc:
            raise IRError(f"{p.name}: {exc}") from None
        except DiagnosticException as exc:
            raise IRError(f"{p.name}: {exc}") from None
        verify(module, p.name)
        if after_each is not None:
            after_each(p.name, module)
    return module


def load_module(path: str, cluster: str | None = None) -> ModuleOp:
    """An agent YAML through the frontend, or terrazzo MLIR text parsed and verified."""
    if path.endswith(".mlir"):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise IRError(f"cannot read {path}: {exc.strerror}") from None
        return parse_module(text, path)
    try:
        catalog = load_cluster(cluster)[1] if cluster else load_catalog()
        agent = load_agent(path, catalog)
    except TerrazzoError as exc:
        raise IRError(str(exc)) from None
    module = agent_to_module(agent, catalog)
    verify(module, "the frontend")
    return module


def compile_path(
    path: str, emit: str = "granular", pipeline: list[str] | None = None, cluster: str | None = None,
    plan: str | None = None, sla: str | None = None,
) -> str:
    """Compile `path` to the `emit` stage (or through `pipeline`) and return the module as MLIR text."""
    if pipeline is None and emit not in STAGES:
        raise IRError(f"unknown --emit {emit!r}; stages are {', '.join(STAGES)}")
    names = pipeline if pipeline is not None else STAGES[emit]
    passes = [make_pass(n, cluster, plan, sla) for n in names if n.strip()]
    module = load_module(path, cluster)
    if pipeline is None and path.endswith(".mlir"):
        passes = [p for p in passes if not _done(module, p.name, cluster, plan)]
    return print_module(run_pipeline(module, passes))


def _done(module: ModuleOp, name: str, cluster: str | None, plan: str | None) -> bool:
    """Whether re-read text already holds what `name` would add and nothing asks to redo it."""
    if name == "estimate-cost" and cluster is None:
        return any(CANDIDATES in op.attributes for op in module.walk())
    if name == "apply-plan" and plan is None:
        return any(PLACE in op.attributes for op in module.walk())
    return False
