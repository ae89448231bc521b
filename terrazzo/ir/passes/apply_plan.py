"""apply-plan: write a placement file's decisions onto the ops as `tz.place` (see terrazzo/ir/placement_file.py).

The module ends up with exactly the plan's placements: earlier ones are cleared, and a key that names no op
is an error (a plan for another agent, say). A key may be an op id, a node id (every op made from that node:
a plan made before decomposition still applies) or `<node>.aggregated` (both phases of an LLM call on the
same replicas; the batch is the decode's, the prefill takes one prompt at a time). Exact op ids win over
coarser keys. An MoE phase's tensor-parallel degree becomes its expert op's `tp` and its all-reduce's `group`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from terrazzo.errors import IRError
from terrazzo.ir.attributes import PlacementAttr
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.granular_dialect import AllReduceOp, MoeExpertOp
from terrazzo.ir.dialects.node_op import PLACE, NodeOp, i64_attr
from terrazzo.ir.module_graph import placeable_ops


@dataclass(frozen=True)
class ApplyPlan(ModulePass):
    name = "apply-plan"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        plan = inputs_of(ctx).placements
        if plan is None:
            raise IRError("apply-plan needs a placement file: pass --plan PLAN.json (schema terrazzo.placement/v1, "
                          "see terrazzo/ir/placement_file.py)")
        ops = {o.node_id: o for o in placeable_ops(op)}
        by_node: dict[str, list[NodeOp]] = {}
        for o in ops.values():
            by_node.setdefault(o.node_id.split(".")[0], []).append(o)
        targets = {key: _targets(key, ops, by_node) for key in plan.placements}
        unknown = sorted(k for k, t in targets.items() if not t)
        if unknown:
            raise IRError(f"{plan.path} places {', '.join(repr(u) for u in unknown[:5])}, which this module does not "
                          f"have; its placeable ops are {', '.join(sorted(ops)[:12])}"
                          + (" …" if len(ops) > 12 else ""))
        for target in ops.values():
            target.attributes.pop(PLACE, None)
        tp_of: dict[str, int] = {}
        for key in sorted(plan.placements, key=lambda k: k in ops):  # exact ids last, so they win
            p = plan.placements[key]
            for target in targets[key]:
                batch = 1 if key.endswith(".aggregated") and target.node_id.endswith(".prefill") else p.batch
                target.attributes[PLACE] = PlacementAttr.make(pool=p.pool_name, device=p.device, tp=p.tp, pp=p.pp,
                                                              batch=batch, replicas=p.replicas)
                if isinstance(target, MoeExpertOp):
                    target.properties["tp"] = i64_attr(p.tp)
                    tp_of[target.node_id] = p.tp
        for node in op.walk():
            if isinstance(node, AllReduceOp) and node.anchor.data in tp_of:
                node.properties["group"] = i64_attr(tp_of[node.anchor.data])



def _targets(key: str, ops: dict[str, NodeOp], by_node: dict[str, list[NodeOp]]) -> list[NodeOp]:
    if key in ops:
        return [ops[key]]
    node = key.removesuffix(".aggregated")
    return list(by_node.get(node, []))
