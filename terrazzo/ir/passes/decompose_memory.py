"""decompose-memory: `agent.memory.lookup` → `tz.embed.encode` (the query) → `tz.ann.search` (the index);
`agent.embed`, `agent.memory.load` and `agent.memory.store` become their granular forms, keeping their ids
and any annotations (their cost does not change)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from terrazzo.ir.dialects.agent_dialect import EmbedOp, MemoryLoadOp, MemoryLookupOp, MemoryStoreOp
from terrazzo.ir.dialects.granular_dialect import AnnSearchOp, EmbedEncodeOp, MemLoadOp, MemStoreOp
from terrazzo.ir.dialects.node_op import NodeOp, int_prop
from terrazzo.ir.passes.common import rewrite

EMBEDDING_BYTES_PER_DIM = 4  # fp32 query vector


class SplitMemoryLookup(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: MemoryLookupOp, rewriter: PatternRewriter) -> None:
        nid, visits = op.node_id, op.visit_count
        embed = EmbedEncodeOp.make(f"{nid}.embed", list(op.inputs), visits, op.bytes_in, op.join_mode,
                                   {"model": op.embed_model, "tokens": op.query_tokens})
        search = AnnSearchOp.make(
            f"{nid}.search", [embed.out], visits, [int_prop(op, "dimension") * EMBEDDING_BYTES_PER_DIM],
            props={k: op.properties[k] for k in ("index_vectors", "dimension", "k", "index")})
        rewriter.replace(op, [embed, search], [search.out])


class LowerOneToOne(RewritePattern):
    """Ops whose granular form is the same work under a `tz` name."""

    TARGETS: ClassVar[dict[type[NodeOp], type[NodeOp]]] = {
        EmbedOp: EmbedEncodeOp, MemoryLoadOp: MemLoadOp, MemoryStoreOp: MemStoreOp}

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, NodeOp):
            return
        target = self.TARGETS.get(type(op))
        if target is None:
            return
        new = target.make(op.node_id, list(op.operands), op.visit_count, op.bytes_in, op.join_mode,
                          op.common_props(), attrs=op.attributes)
        rewriter.replace(op, [new], [new.results[0]])


@dataclass(frozen=True)
class DecomposeMemory(ModulePass):
    name = "decompose-memory"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        rewrite(op, SplitMemoryLookup(), LowerOneToOne())
