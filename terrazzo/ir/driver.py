"""`terrazzo compile`: an agent YAML (or terrazzo's own MLIR text) through the pass pipeline to MLIR text.

Stages, each the previous one plus passes:
  agent        the frontend's output, one op per spec node
  granular     + decompose-llm, decompose-moe, decompose-tools, decompose-memory, decompose-kv
  estimated    + estimate-cost
  placed       + apply-plan, verify-placement
  partitioned  + partition
`--emit placement` stops at `estimated` and prints each op's cheapest feasible candidate as a placement file,
for trying apply-plan and partition before a planner result is at hand.
`pipeline` replaces the stage's passes. A `.mlir` input is parsed, verified and brought to the stage the same
way: the decompositions and partition change nothing the text has already been through, and estimate-cost
and apply-plan are skipped when its ops already carry candidates or placements and no --cluster or --plan
asks for new ones.

The cluster (with its own catalogs), the SLA and the plan are loaded once, here, into the pass context that
every pass reads (ir/context.py); passes take no file paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import parse_spec
from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.errors import IRError, TerrazzoError
from terrazzo.ir.context import TerrazzoContext, make_context, parse_module, print_module, verify
from terrazzo.ir.dialects.node_op import CANDIDATES, PLACE
from terrazzo.ir.frontend import agent_to_module
from terrazzo.ir.passes import PASSES
from terrazzo.ir.placement_file import cheapest_plan, load_placements
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla

DECOMPOSE = ["decompose-llm", "decompose-moe", "decompose-tools", "decompose-memory", "decompose-kv"]
STAGES: dict[str, list[str]] = {
    "agent": [],
    "granular": DECOMPOSE,
    "estimated": [*DECOMPOSE, "estimate-cost"],
    "placed": [*DECOMPOSE, "estimate-cost", "apply-plan", "verify-placement"],
    "partitioned": [*DECOMPOSE, "estimate-cost", "apply-plan", "verify-placement", "partition"],
}


def make_pass(entry: str) -> ModulePass:
    """A pass from `name` or `name{option=value ...}`."""
    try:
        spec = parse_spec(entry.strip())
    except ArgSpecParseError as exc:
        raise IRError(f"bad pass spec {entry!r}: {exc}") from None
    cls = PASSES.get(spec.name)
    if cls is None:
        raise IRError(f"unknown pass {spec.name!r}; passes are {', '.join(PASSES)}")
    try:
        return cls.from_spec(spec)
    except Exception as exc:  # xDSL raises plain exceptions for bad options
        raise IRError(f"bad options for {spec.name}: {exc}") from None


def pass_context(cluster: str | None = None, plan: str | None = None, sla: str | None = None,
                 catalog: Catalog | None = None) -> TerrazzoContext:
    """The inputs the passes read, each file loaded once: a cluster brings its own catalogs (layered on
    `catalog`, or the shipped one), an SLA its limits, a plan its placements."""
    try:
        spec, cat = load_cluster(cluster) if cluster else (None, catalog or load_catalog())
        return make_context(cat, spec, load_sla(sla) if sla else None, load_placements(plan) if plan else None)
    except IRError:
        raise
    except TerrazzoError as exc:  # spec and catalog errors keep their file:line message
        raise IRError(str(exc)) from None


def run_pipeline(module: ModuleOp, passes: Sequence[ModulePass], ctx: TerrazzoContext | None = None,
                 after_each: Callable[[str, ModuleOp], None] | None = None) -> ModuleOp:
    """Run `passes` in order under `ctx` (default: the shipped catalog), verifying the module after each;
    errors name the pass."""
    ctx = ctx or make_context()
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


def load_module(path: str, ctx: TerrazzoContext | None = None) -> ModuleOp:
    """An agent YAML through the frontend (models from `ctx`'s catalog), or terrazzo MLIR text parsed and
    verified."""
    if path.endswith(".mlir"):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise IRError(f"cannot read {path}: {exc.strerror}") from None
        return parse_module(text, path)
    catalog = (ctx or make_context()).catalog
    try:
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
    if pipeline is None and emit not in (*STAGES, "placement"):
        raise IRError(f"unknown --emit {emit!r}; stages are {', '.join(STAGES)} (or placement)")
    names = pipeline if pipeline is not None else STAGES["estimated" if emit == "placement" else emit]
    passes = [make_pass(n) for n in names if n.strip()]
    ctx = pass_context(cluster, plan, sla)
    module = load_module(path, ctx)
    if pipeline is None and path.endswith(".mlir"):
        passes = [p for p in passes if not _done(module, p.name, cluster, plan)]
    run_pipeline(module, passes, ctx)
    return cheapest_plan(module).dumps() if emit == "placement" and pipeline is None else print_module(module)


def _done(module: ModuleOp, name: str, cluster: str | None, plan: str | None) -> bool:
    """Whether re-read text already holds what `name` would add and nothing asks to redo it."""
    if name == "estimate-cost" and cluster is None:
        return any(CANDIDATES in op.attributes for op in module.walk())
    if name == "apply-plan" and plan is None:
        return any(PLACE in op.attributes for op in module.walk())
    return False
