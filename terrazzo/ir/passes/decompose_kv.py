"""decompose-kv: an LLM call's prefix becomes explicit KV values its prefill reads instead of computing.

For every prefill (a `tz.llm.prefill`, or an `agent.llm.call` left whole) whose call names prefix sources:
- each shared source (`system_prompt:NAME`, `context:NAME`) gets a `tz.kv.retain` with no operands: the
  prompt is resident on the replica whoever computed it, and every call naming it reads the same key;
- `conversation` gets a `tz.kv.retain` of the KV of the LLM calls that feed this one through the graph —
  for a loop body, its own previous iteration (through the loop's repeat edge): iteration k reads
  iteration k-1's context, which holds everything before k's new input. That holds only when those calls
  share this call's model and its shared prefix, so their token sequence starts the same; otherwise the
  conversation is recomputed;
- a `tz.kv.reuse` gathers the retained prefixes and feeds the prefill, which gets `cached_tokens` (read)
  and `new_tokens` (computed): prefill is priced on the new tokens, attention over the full context.
With `tier=host|disk` each retained prefix is parked on that tier (`tz.kv.offload`) while it waits.
Whether a prefix is worth retaining is the planner's choice; this pass states what can be reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import BlockArgument, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.errors import IRError
from terrazzo.ir.attributes import KvType
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.agent_dialect import InputOp, LlmCallOp, OutputOp, SubagentOp
from terrazzo.ir.dialects.granular_dialect import (
    KV_OPS,
    KV_TIERS,
    DecodeOp,
    KvOffloadOp,
    KvRetainOp,
    KvReuseOp,
    KvTransferOp,
    LlmPhase,
    MoeExpertOp,
    PrefillOp,
)
from terrazzo.ir.dialects.node_op import NodeOp, count_attr, f64_attr, mean_prop, str_prop
from terrazzo.ir.dialects.prefix_props import CONVERSATION, prefix_keys, prefix_sizes
from terrazzo.ir.passes.common import model_of


def is_prefill(op: Operation) -> bool:
    """Ops that process an LLM call's prompt: where cached tokens are saved."""
    return (isinstance(op, PrefillOp | LlmCallOp)
            or (isinstance(op, MoeExpertOp) and op.phase.data == "prefill"))


def feeding_calls(op: NodeOp) -> list[NodeOp]:
    """The LLM ops nearest upstream of `op` along data edges (through tools, routers, transfers, loop
    repeats and sub-agent boundaries): the calls whose context precedes this call's new input."""
    found: list[NodeOp] = []
    seen: set[int] = set()
    todo: list[SSAValue] = [v for v in op.operands if not isinstance(v.owner, KV_OPS)]
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, BlockArgument):
            owner = value.block.parent_op()
            if isinstance(owner, SubagentOp):
                todo.append(owner.operands[value.index])
            continue
        assert isinstance(value, OpResult)
        producer = value.op
        if isinstance(producer, LlmPhase | LlmCallOp) and producer is not op:
            if producer not in found:
                found.append(producer)
            continue
        if producer is op or isinstance(producer, InputOp | KvRetainOp | KvOffloadOp | KvReuseOp):
            continue
        if isinstance(producer, SubagentOp):
            out = producer.body.block.last_op
            assert isinstance(out, OutputOp)
            todo += list(out.operands)
            continue
        todo += list(producer.operands)
    return found


def _prefill_kv(call: NodeOp) -> SSAValue | None:
    """The KV cache a call leaves: its prefill's `!tz.kv` result (a whole call has no KV value to name)."""
    if isinstance(call, PrefillOp):
        return call.out
    if isinstance(call, DecodeOp | MoeExpertOp):
        value = call.operands[0] if call.operands else None
        while value is not None and isinstance(value, OpResult) and isinstance(value.op, KvTransferOp):
            value = value.op.operands[0]
        if value is not None and isinstance(value, OpResult) and isinstance(value.op, PrefillOp):
            return value
    return None


def _continues(call: NodeOp, op: NodeOp) -> bool:
    """Whether `call`'s context is the start of `op`'s input: same model, same shared prefix, and it
    carries the conversation too (so its KV holds everything before `op`'s new input)."""
    shared = [k for k in prefix_keys(op) if k != CONVERSATION]
    return (str_prop(call, "model") == str_prop(op, "model") and CONVERSATION in prefix_keys(call)
            and [k for k in prefix_keys(call) if k != CONVERSATION] == shared)


@dataclass
class KvDecomposer:
    catalog: Catalog
    tier: str | None = None

    def run(self, module: ModuleOp) -> None:
        for op in [o for o in module.walk() if is_prefill(o)]:
            assert isinstance(op, NodeOp)
            if prefix_keys(op) and "cached_tokens" not in op.properties:
                self._decompose(op)

    def _decompose(self, op: NodeOp) -> None:
        per_token = kv_bytes_per_token(model_of(self.catalog, op), str_prop(op, "dtype") or "bf16")
        nid, visits = op.node_id.removesuffix(".prefill"), op.visit_count
        block = op.parent_block()
        assert block is not None
        held: list[SSAValue] = []
        cached = 0.0
        for key, tokens in zip(prefix_keys(op), prefix_sizes(op), strict=True):
            sources: list[SSAValue] = []
            if key == CONVERSATION:
                calls = feeding_calls(op)
                if not all(_continues(c, op) for c in calls):
                    continue  # an earlier call's context starts differently: nothing to reuse
                sources = [v for v in (_prefill_kv(c) for c in calls) if v is not None]
            props = {"anchor": StringAttr(op.node_id), "prefix": StringAttr(key), "tokens": f64_attr(tokens),
                     "bytes": count_attr(tokens * per_token)}
            retain = KvRetainOp.make(f"{nid}.kv.retain.{key.replace(':', '.')}", sources, visits, [0.0] * len(sources),
                                     props=props, result_types=[KvType()])
            block.insert_op_before(retain, op)
            value: SSAValue = retain.out
            if self.tier is not None:
                park = KvOffloadOp.make(f"{nid}.kv.offload.{key.replace(':', '.')}", [value], visits, [0.0],
                                        props={**props, "tier": StringAttr(self.tier)},
                                        result_types=[KvType()])
                block.insert_op_before(park, op)
                value = park.out
            held.append(value)
            cached += tokens
        total = mean_prop(op, "input_tokens")
        cached = min(cached, total)
        op.properties["cached_tokens"] = f64_attr(cached)
        op.properties["new_tokens"] = f64_attr(total - cached)
        if not held:
            return
        reuse = KvReuseOp.make(f"{nid}.kv.reuse", held, visits, [0.0] * len(held),
                               props={"anchor": StringAttr(op.node_id), "tokens": f64_attr(cached),
                                      "bytes": count_attr(cached * per_token)},
                               result_types=[KvType()])
        block.insert_op_before(reuse, op)
        if isinstance(op, PrefillOp):  # a whole llm.call or MoE phase takes messages only; its reuse rides
            op.operands = [*op.operands, reuse.out]
            op.set_bytes_in([*op.bytes_in, 0.0])


@dataclass(frozen=True)
class DecomposeKv(ModulePass):
    name = "decompose-kv"
    tier: str = ""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.tier and self.tier not in KV_TIERS:
            raise IRError(f"decompose-kv tier '{self.tier}' is not one of {', '.join(KV_TIERS)}")
        KvDecomposer(inputs_of(ctx).catalog, self.tier or None).run(op)
