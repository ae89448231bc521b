"""decompose-llm: `agent.llm.call` → `tz.llm.prefill` → `tz.kv.transfer` → `tz.llm.decode`.

The KV transfer carries the prompt's cache (kv_bytes_per_token × mean input tokens), so the planner sees what
disaggregating the call costs. A call whose spec says `serving: aggregated` stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.ir.attributes import DataType, KvType
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.agent_dialect import LlmCallOp
from terrazzo.ir.dialects.granular_dialect import DecodeOp, KvTransferOp, PrefillOp
from terrazzo.ir.dialects.node_op import count_attr
from terrazzo.ir.passes.common import model_of, rewrite


@dataclass
class SplitLlmCall(RewritePattern):
    catalog: Catalog

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LlmCallOp, rewriter: PatternRewriter) -> None:
        if op.serving.data == "aggregated":
            return
        model = model_of(self.catalog, op)
        kv_bytes = kv_bytes_per_token(model, op.dtype.data) * op.input_tokens.mean_value
        nid, visits, props = op.node_id, op.visit_count, op.common_props()
        prefill = PrefillOp.make(f"{nid}.prefill", list(op.inputs), visits, op.bytes_in, op.join_mode, props,
                                 result_types=[KvType()])
        move = KvTransferOp.make(f"{nid}.kv", [prefill.out], visits, [kv_bytes], props={"bytes": count_attr(kv_bytes)},
                                 result_types=[KvType()])
        decode = DecodeOp.make(f"{nid}.decode", [move.out], visits, [kv_bytes], props=props,
                               result_types=[DataType()])
        rewriter.replace(op, [prefill, move, decode], [decode.out])


@dataclass(frozen=True)
class DecomposeLlm(ModulePass):
    name = "decompose-llm"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        rewrite(op, SplitLlmCall(inputs_of(ctx).catalog))
