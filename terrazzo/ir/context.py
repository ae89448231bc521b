"""Reading and writing terrazzo IR: the pass context (both dialects loaded, plus the catalog, cluster, SLA
and placements the passes price and place against), the parser and the printer."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, Builtin, ModuleOp
from xdsl.ir import Attribute, Operation
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.errors import IRError
from terrazzo.ir.dialects import Agent, Tz
from terrazzo.ir.dialects.node_op import CANDIDATES
from terrazzo.ir.placement_file import PlacementFile
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla


@dataclass
class TerrazzoContext(Context):
    """xDSL's context plus the inputs terrazzo's passes read, each loaded once by the caller.

    A pass never opens a file: the catalog (shipped, a cluster's own catalogs and a profile layered on),
    the cluster, the SLA and the placements arrive here, so every pass of a run sees the same ones. Passes run
    under a plain xDSL `Context` (xdsl-opt) see the shipped catalog and no cluster, SLA or plan.
    """

    catalog: Catalog = field(default_factory=load_catalog)
    cluster: Cluster | None = None
    sla: Sla | None = None
    placements: PlacementFile | None = None


def make_context(catalog: Catalog | None = None, cluster: Cluster | None = None, sla: Sla | None = None,
                 placements: PlacementFile | None = None) -> TerrazzoContext:
    ctx = TerrazzoContext(catalog=catalog or load_catalog(), cluster=cluster, sla=sla, placements=placements)
    for dialect in (Builtin, Agent, Tz):
        ctx.load_dialect(dialect)
    return ctx


def inputs_of(ctx: Context) -> TerrazzoContext:
    """`ctx` itself when it is terrazzo's; the shipped defaults under a plain xDSL context."""
    return ctx if isinstance(ctx, TerrazzoContext) else make_context()


def parse_module(text: str, name: str = "<mlir>") -> ModuleOp:
    """Parse and verify MLIR text; any problem becomes an IRError naming the place."""
    try:
        module = Parser(make_context(), text, name).parse_module()
    except ParseError as exc:
        raise IRError(str(exc).strip()) from None
    try:
        module.verify()
    except VerifyException as exc:
        raise IRError(f"{name}: {exc}") from None
    return module


def print_module(module: ModuleOp) -> str:
    """MLIR text of `module`; each distinct candidate list is printed once, as an alias at the top.

    Ops with the same configuration share one list (estimate-cost caches them), so aliases keep the text
    proportional to the distinct configurations and put each table of candidates on lines of its own.
    """
    text = _print(module)
    names: dict[ArrayAttr, str] = {}
    for op in module.walk():
        cands = op.attributes.get(CANDIDATES)
        if isinstance(cands, ArrayAttr) and cands.data and cands not in names:
            names[cands] = _alias_name(getattr(op, "node_id", op.name), set(names.values()))
    defs = []
    for cands, name in names.items():
        items = [_print(c) for c in cands.data]
        text = text.replace(f"{CANDIDATES} = [{', '.join(items)}]", f"{CANDIDATES} = {name}")
        defs.append(f"{name} = [\n  " + ",\n  ".join(items) + "\n]\n")
    return "".join(defs) + text + "\n"


def _print(node: Operation | Attribute) -> str:
    out = io.StringIO()
    printer = Printer(stream=out)
    if isinstance(node, Operation):
        printer.print_op(node)
    else:
        printer.print_attribute(node)
    return out.getvalue()


def _alias_name(op_id: str, taken: set[str]) -> str:
    """`#think_prefill` for op `think.prefill`: MLIR alias names are bare identifiers without dots."""
    base = "#" + re.sub(r"[^A-Za-z0-9_]", "_", op_id)
    base = base if base[1:2].isalpha() or base[1:2] == "_" else f"#c_{base[1:]}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def verify(module: ModuleOp, after: str) -> None:
    try:
        module.verify()
    except VerifyException as exc:
        raise IRError(f"invalid IR after {after}: {exc}") from None
