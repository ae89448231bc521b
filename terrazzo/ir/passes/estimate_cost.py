"""estimate-cost: attach `tz.candidates` — every device configuration that could run the op, priced.

Devices, fabric and TCO profile come from the context's cluster, or the default device list; its SLA sets the
TTFT/TBT limits LLM candidates must meet. Re-running replaces the annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, ModuleOp
from xdsl.passes import ModulePass

from terrazzo.ir.candidate_pricing import CostModel
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.node_op import CANDIDATES, NodeOp


@dataclass(frozen=True)
class EstimateCost(ModulePass):
    """`keep_all` keeps dominated candidates too (the default keeps each device's Pareto front)."""

    name = "estimate-cost"
    keep_all: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        annotate(op, CostModel.for_context(inputs_of(ctx), self.keep_all))


def annotate(module: ModuleOp, model: CostModel) -> None:
    """Attach every placeable op's candidates under `model` (the planner calls this directly)."""
    for node in module.walk():
        if isinstance(node, NodeOp):
            cands = model.candidates(node)
            if cands is not None:
                node.attributes[CANDIDATES] = ArrayAttr(cands)
