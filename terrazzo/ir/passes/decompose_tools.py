"""decompose-tools: `agent.tool.invoke` → `tz.tool.lookup` (host CPU: resolve, marshal) → `tz.tool.compute`
(the call itself: a remote wait for http tools, a local function for python ones). They can sit apart: the
lookup next to the LLM that asked, the compute on a pool with the tool's network access."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from terrazzo.ir.dialects.agent_dialect import ToolInvokeOp
from terrazzo.ir.dialects.granular_dialect import ToolComputeOp, ToolLookupOp
from terrazzo.ir.dialects.node_op import float_prop
from terrazzo.ir.passes.common import rewrite

LOOKUP_PROPS = ("protocol", "cpu_s", "request_bytes")
COMPUTE_PROPS = ("protocol", "endpoint", "function", "latency_s", "response_bytes")


class SplitToolInvoke(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ToolInvokeOp, rewriter: PatternRewriter) -> None:
        props = op.common_props()
        nid, visits = op.node_id, op.visit_count
        lookup = ToolLookupOp.make(f"{nid}.lookup", list(op.inputs), visits, op.bytes_in, op.join_mode,
                                   {k: v for k, v in props.items() if k in LOOKUP_PROPS})
        compute = ToolComputeOp.make(f"{nid}.compute", [lookup.out], visits, [float_prop(op, "request_bytes")],
                                     props={k: v for k, v in props.items() if k in COMPUTE_PROPS})
        rewriter.replace(op, [lookup, compute], [compute.out])


@dataclass(frozen=True)
class DecomposeTools(ModulePass):
    name = "decompose-tools"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        rewrite(op, SplitToolInvoke())
