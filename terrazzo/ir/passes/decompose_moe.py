"""decompose-moe: each phase of a mixture-of-experts model → gate → expert → merge → all-reduce (paper Fig 7).

`tz.moe.expert` takes over the phase's id (`think.prefill`), fields and placement: it is the op the planner
places, and llm_candidates already prices the whole phase (router, experts, attention, TP all-reduce). The
gate, merge and all-reduce ride with it (`anchor`) and record their own θ — FLOPs and bytes per visit over all
MoE layers — so reports and the runtime see where the phase's work and traffic go. The one chain stands for
the model's layers, each of which runs gate → experts → merge → all-reduce in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import DTYPE_BYTES, ModelSpec
from terrazzo.cost.llm import ACTIVATION_BYTES
from terrazzo.ir.attributes import ActType
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.granular_dialect import (
    AllReduceOp,
    DecodeOp,
    MoeExpertOp,
    MoeGateOp,
    MoeMergeOp,
    PrefillOp,
)
from terrazzo.ir.dialects.node_op import count_attr, i64_attr
from terrazzo.ir.passes.common import model_of, rewrite


def moe_work(model: ModelSpec, tokens: float, dtype: str) -> dict[str, float]:
    """θ of the riders for `tokens` tokens through every MoE layer."""
    layers = model.layers - model.dense_layers
    hidden, act = model.hidden, tokens * model.hidden * ACTIVATION_BYTES
    return {
        "gate_flops": 2 * hidden * model.experts * tokens * layers,
        "gate_bytes": (hidden * model.experts * DTYPE_BYTES[dtype] + act) * layers,
        "merge_flops": 2 * model.active_experts * hidden * tokens * layers,
        "merge_bytes": act * (model.active_experts + 1) * layers,
        "allreduce_bytes": 2 * act * model.layers,  # after attention and after the MoE block, every layer
        "act_bytes": act,
    }


@dataclass
class SplitMoePhase(RewritePattern):
    catalog: Catalog
    tp: int

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, PrefillOp | DecodeOp):
            return
        model = model_of(self.catalog, op)
        if not model.is_moe:
            return
        phase = "prefill" if isinstance(op, PrefillOp) else "decode"
        tokens = (op.input_tokens if phase == "prefill" else op.output_tokens).mean_value
        work = moe_work(model, tokens, op.dtype.data)
        nid, visits, act = op.node_id, op.visit_count, work["act_bytes"]
        rider = {"anchor": StringAttr(nid), "phase": StringAttr(phase)}
        gate = MoeGateOp.make(
            f"{nid}.gate", list(op.inputs), visits, op.bytes_in, op.join_mode,
            {**rider, "experts": i64_attr(model.experts), "top_k": i64_attr(model.active_experts),
             "flops": count_attr(work["gate_flops"]), "mem_bytes": count_attr(work["gate_bytes"])},
            result_types=[ActType()])
        expert = MoeExpertOp.make(
            nid, [gate.out], visits, [act],
            props={**op.common_props(), "phase": StringAttr(phase), "tp": i64_attr(self.tp),
                   "experts": i64_attr(model.experts), "top_k": i64_attr(model.active_experts)},
            result_types=[ActType()], attrs=op.attributes)
        merge = MoeMergeOp.make(
            f"{nid}.merge", [expert.out], visits, [act * model.active_experts],
            props={**rider, "top_k": i64_attr(model.active_experts), "flops": count_attr(work["merge_flops"]),
                   "mem_bytes": count_attr(work["merge_bytes"])},
            result_types=[ActType()])
        reduce = AllReduceOp.make(
            f"{nid}.allreduce", [merge.out], visits, [act],
            props={**rider, "bytes": count_attr(work["allreduce_bytes"]), "group": i64_attr(self.tp)},
            result_types=[op.out.type])
        rewriter.replace(op, [gate, expert, merge, reduce], [reduce.out])


@dataclass(frozen=True)
class DecomposeMoe(ModulePass):
    """`tp` is the tensor-parallel degree written on experts and all-reduces until apply-plan sets the plan's."""

    name = "decompose-moe"
    tp: int = 1

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        rewrite(op, SplitMoePhase(inputs_of(ctx).catalog, self.tp))
