"""The `tz` dialect: the granular operators the planner places (paper §4.2, Fig 7).

Compute ops: LLM phases (`tz.llm.prefill`, `tz.llm.decode`), MoE phases (`tz.moe.expert`, with its riders
`tz.moe.gate`, `tz.moe.merge`, `tz.collective.allreduce`), tools (`tz.tool.lookup`, `tz.tool.compute`),
retrieval (`tz.embed.encode`, `tz.ann.search`) and memory (`tz.memory.load`, `tz.memory.store`).
Prefix KV (decompose-kv): `tz.kv.retain` holds a prefix between calls, `tz.kv.offload` parks it on a
host or disk tier, `tz.kv.reuse` hands the resident prefixes to the prefill that reads them.
Data movement: `tz.kv.transfer` (prefill → decode) and `tz.transfer` (any edge between pools), each with
its bytes and, once partitioned, its link. Placement: `tz.pool` holds one device pool's ops in an isolated
region whose arguments and `tz.yield` operands are the values that cross its boundary.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, FloatAttr, IntegerAttr, StringAttr
from xdsl.ir import Dialect, Operation
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator
from xdsl.utils.exceptions import VerifyException

from terrazzo.ir.attributes import (
    LINK_KINDS,
    ActType,
    CandidateAttr,
    DataType,
    DistAttr,
    KvType,
    PlacementAttr,
)
from terrazzo.ir.dialects.agent_dialect import verify_index, verify_tool
from terrazzo.ir.dialects.node_op import (
    DTYPES,
    PHASES,
    SERVING,
    VALUE_TYPES,
    NodeOp,
    check_choice,
    check_dist,
    check_positive,
    float_prop,
    int_prop,
    str_prop,
)
from terrazzo.ir.dialects.prefix_props import verify_prefix

TZ_FORMAT = "$id (`(` $inputs^ `:` type($inputs) `)`)? attr-dict `:` type($out)"


class TzOp(NodeOp):
    inputs = var_operand_def()
    assembly_format = TZ_FORMAT


class LlmPhase(TzOp):
    """Fields shared by the LLM phase ops: what llm_candidates needs to cost them."""

    model = prop_def(StringAttr)
    dtype = prop_def(StringAttr)
    input_tokens = prop_def(DistAttr)
    output_tokens = prop_def(DistAttr)
    serving = prop_def(StringAttr)
    prefix = opt_prop_def(ArrayAttr)  # see dialects/prefix_props.py
    prefix_tokens = opt_prop_def(DenseArrayBase)
    new_tokens = opt_prop_def(FloatAttr)
    cached_tokens = opt_prop_def(FloatAttr)

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "dtype", self.dtype.data, DTYPES)
        check_choice(self, "serving", self.serving.data, SERVING)
        check_dist(self, "input_tokens", self.input_tokens, positive=True)
        check_dist(self, "output_tokens", self.output_tokens, positive=True)
        verify_prefix(self)


def _needs_kv_input(op: NodeOp) -> None:
    if not any(isinstance(v.type, KvType | ActType) for v in op.operands):
        raise op.fail("needs a !tz.kv (or, inside a decomposed MoE phase, !tz.act) operand")


@irdl_op_definition
class PrefillOp(LlmPhase):
    """Processes the prompt and leaves its KV cache; its latency is the time to first token."""

    name = "tz.llm.prefill"
    out = result_def(KvType)


@irdl_op_definition
class DecodeOp(LlmPhase):
    """Generates the answer token by token from a KV cache; its per-step latency is the TBT."""

    name = "tz.llm.decode"
    out = result_def(DataType)

    def verify_(self) -> None:
        super().verify_()
        _needs_kv_input(self)


@irdl_op_definition
class KvTransferOp(TzOp):
    """Moves a prefill's KV cache to its decode; partition drops it when both sit in one pool."""

    name = "tz.kv.transfer"
    out = result_def(KvType)
    bytes = prop_def(IntegerAttr)
    link = opt_prop_def(StringAttr)
    src = opt_prop_def(StringAttr)
    dst = opt_prop_def(StringAttr)
    latency_s = opt_prop_def(FloatAttr)

    def verify_(self) -> None:
        super().verify_()
        if len(self.operands) != 1 or not isinstance(self.operands[0].type, KvType):
            raise self.fail("takes exactly one !tz.kv operand")
        verify_link(self)


KV_TIERS = ("host", "disk")


class KvOp(TzOp):
    """A prefix's KV cache kept for a later call: it rides with the op that reads it (`anchor`, the
    prefill), whose pool holds it. `tokens` is the mean prefix per visit, `bytes` its KV cache."""

    anchor = prop_def(StringAttr)
    tokens = prop_def(FloatAttr)
    bytes = prop_def(IntegerAttr)
    out = result_def(KvType)

    def verify_(self) -> None:
        super().verify_()
        for i, v in enumerate(self.operands):
            if not isinstance(v.type, KvType):
                raise self.fail(f"operand {i} has type {v.type}; it takes !tz.kv values")
        check_positive(self, "tokens", float_prop(self, "tokens"))
        check_positive(self, "bytes", float_prop(self, "bytes"))


@irdl_op_definition
class KvRetainOp(KvOp):
    """Holds one prefix source (`prefix`: `conversation`, `system_prompt:NAME`, `context:NAME`) on the replica
    between calls. Operands: the KV of the calls whose context it keeps (a loop's previous iteration, an
    earlier call of the conversation); none for a shared prompt, resident whoever computed it."""

    name = "tz.kv.retain"
    prefix = prop_def(StringAttr)


@irdl_op_definition
class KvOffloadOp(KvOp):
    """Moves a retained prefix to a slower `tier` (host DRAM, local disk) while it waits; the read back
    costs bytes / bandwidth + latency of that tier (cost/kv_tiers.py)."""

    name = "tz.kv.offload"
    prefix = prop_def(StringAttr)
    tier = prop_def(StringAttr)

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "tier", self.tier.data, KV_TIERS)
        if len(self.operands) != 1:
            raise self.fail(f"takes exactly one !tz.kv operand (the retained prefix), has {len(self.operands)}")


@irdl_op_definition
class KvReuseOp(KvOp):
    """The resident prefixes the anchor's prefill reads instead of computing: `tokens` is its cached_tokens."""

    name = "tz.kv.reuse"

    def verify_(self) -> None:
        super().verify_()
        if not self.operands:
            raise self.fail("needs at least one !tz.kv operand (a retained or offloaded prefix)")


KV_OPS = (KvRetainOp, KvOffloadOp, KvReuseOp)


def verify_link(op: NodeOp) -> None:
    check_positive(op, "bytes", float_prop(op, "bytes"))
    if "link" in op.properties:
        check_choice(op, "link", str_prop(op, "link") or "", LINK_KINDS)
    if "latency_s" in op.properties:
        check_positive(op, "latency_s", float_prop(op, "latency_s"))


class MoeRider(TzOp):
    """A part of an MoE phase that runs where its phase (`anchor`, a tz.moe.expert id) runs.

    Its θ (`flops`, `mem_bytes` per visit) is recorded for reports; the phase's candidates already include it.
    """

    anchor = prop_def(StringAttr)
    phase = prop_def(StringAttr)
    out = result_def(ActType)

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "phase", self.phase.data, PHASES)


@irdl_op_definition
class MoeGateOp(MoeRider):
    """Router: scores every token against every expert and keeps the top_k."""

    name = "tz.moe.gate"
    experts = prop_def(IntegerAttr)
    top_k = prop_def(IntegerAttr)
    flops = prop_def(IntegerAttr)
    mem_bytes = prop_def(IntegerAttr)

    def verify_(self) -> None:
        super().verify_()
        verify_experts(self)


def verify_experts(op: NodeOp) -> None:
    check_positive(op, "experts", int_prop(op, "experts"), 1)
    check_positive(op, "top_k", int_prop(op, "top_k"), 1)
    if int_prop(op, "top_k") > int_prop(op, "experts"):
        raise op.fail(f"top_k = {int_prop(op, 'top_k')} exceeds experts = {int_prop(op, 'experts')}")


@irdl_op_definition
class MoeExpertOp(LlmPhase):
    """An MoE model's phase (attention and the routed experts' FFNs) on `tp` devices: what the planner places."""

    name = "tz.moe.expert"
    phase = prop_def(StringAttr)
    tp = prop_def(IntegerAttr)
    experts = prop_def(IntegerAttr)
    top_k = prop_def(IntegerAttr)
    out = result_def(ActType)

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "phase", self.phase.data, PHASES)
        check_positive(self, "tp", int_prop(self, "tp"), 1)
        verify_experts(self)
        if self.phase.data == "decode":
            _needs_kv_input(self)


@irdl_op_definition
class MoeMergeOp(MoeRider):
    """Combines each token's top_k expert outputs, weighted by the gate."""

    name = "tz.moe.merge"
    top_k = prop_def(IntegerAttr)
    flops = prop_def(IntegerAttr)
    mem_bytes = prop_def(IntegerAttr)


@irdl_op_definition
class AllReduceOp(TzOp):
    """Tensor-parallel all-reduce closing an MoE phase: `bytes` per visit over a group of `group` devices."""

    name = "tz.collective.allreduce"
    anchor = prop_def(StringAttr)
    phase = prop_def(StringAttr)
    bytes = prop_def(IntegerAttr)
    group = prop_def(IntegerAttr)
    out = result_def()

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "phase", self.phase.data, PHASES)
        check_positive(self, "bytes", float_prop(self, "bytes"))
        check_positive(self, "group", int_prop(self, "group"), 1)
        if not isinstance(self.out.type, VALUE_TYPES):
            raise self.fail(f"result type {self.out.type} is not a terrazzo value type")


@irdl_op_definition
class ToolLookupOp(TzOp):
    """Resolving a tool and marshalling its request: `cpu_s` of host CPU."""

    name = "tz.tool.lookup"
    protocol = prop_def(StringAttr)
    cpu_s = prop_def(DistAttr)
    request_bytes = prop_def(IntegerAttr)
    out = result_def(DataType)

    def verify_(self) -> None:
        super().verify_()
        check_choice(self, "protocol", self.protocol.data, ("http", "python"))


@irdl_op_definition
class ToolComputeOp(TzOp):
    """Running the tool: a remote wait of `latency_s` (http) or a local function (python)."""

    name = "tz.tool.compute"
    protocol = prop_def(StringAttr)
    endpoint = opt_prop_def(StringAttr)
    function = opt_prop_def(StringAttr)
    latency_s = prop_def(DistAttr)
    response_bytes = prop_def(IntegerAttr)
    out = result_def(DataType)

    def verify_(self) -> None:
        super().verify_()
        verify_tool(self)


@irdl_op_definition
class EmbedEncodeOp(TzOp):
    name = "tz.embed.encode"
    model = prop_def(StringAttr)
    tokens = prop_def(DistAttr)
    out = result_def(DataType)


@irdl_op_definition
class AnnSearchOp(TzOp):
    """Approximate nearest-neighbour search of one query over an index of `index_vectors` vectors."""

    name = "tz.ann.search"
    index_vectors = prop_def(IntegerAttr)
    dimension = prop_def(IntegerAttr)
    k = prop_def(IntegerAttr)
    index = prop_def(StringAttr)
    out = result_def(DataType)

    def verify_(self) -> None:
        super().verify_()
        verify_index(self)


@irdl_op_definition
class MemLoadOp(TzOp):
    name = "tz.memory.load"
    store = prop_def(StringAttr)
    data_bytes = prop_def(DistAttr)
    out = result_def(DataType)


@irdl_op_definition
class MemStoreOp(TzOp):
    name = "tz.memory.store"
    store = prop_def(StringAttr)
    data_bytes = prop_def(DistAttr)
    out = result_def(DataType)


@irdl_op_definition
class TransferOp(TzOp):
    """One edge between two pools: `bytes` per visit from pool `src` to pool `dst` over `link`."""

    name = "tz.transfer"
    out = result_def()
    bytes = prop_def(IntegerAttr)
    link = prop_def(StringAttr)
    src = prop_def(StringAttr)
    dst = prop_def(StringAttr)
    latency_s = opt_prop_def(FloatAttr)

    def verify_(self) -> None:
        super().verify_()
        if len(self.operands) != 1:
            raise self.fail(f"takes exactly one operand, has {len(self.operands)}")
        if self.out.type != self.operands[0].type:
            raise self.fail(f"result type {self.out.type} differs from operand type {self.operands[0].type}")
        if self.src.data == self.dst.data:
            raise self.fail(f"src and dst are both pool '{self.src.data}'; a transfer must cross pools")
        verify_link(self)


@irdl_op_definition
class PoolOp(IRDLOperation):
    """One device pool's ops: block arguments are its operands, `tz.yield` operands are its results."""

    name = "tz.pool"
    pool = prop_def(StringAttr)
    device = prop_def(StringAttr)
    inputs = var_operand_def()
    outs = var_result_def()
    body = region_def("single_block")
    traits = traits_def(IsolatedFromAbove())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$pool (`(` $inputs^ `:` type($inputs) `)`)? attr-dict-with-keyword $body `:` type($outs)"

    def verify_(self) -> None:
        where = f"tz.pool '{self.pool.data}'"
        block = self.body.block
        if [a.type for a in block.args] != [v.type for v in self.inputs]:
            raise VerifyException(f"{where}: block argument types must match its operand types")
        term = block.last_op
        if not isinstance(term, YieldOp):
            raise VerifyException(f"{where}: its body must end with tz.yield")
        if [v.type for v in term.operands] != [r.type for r in self.outs]:
            raise VerifyException(f"{where}: tz.yield operand types must match its result types")
        for op in block.ops:
            place = op.attributes.get("tz.place")
            if isinstance(place, PlacementAttr) and place.pool.data != self.pool.data:
                raise VerifyException(f"{where}: holds '{getattr(op, 'node_id', op.name)}' placed in pool "
                                      f"'{place.pool.data}'")


@irdl_op_definition
class YieldOp(IRDLOperation):
    name = "tz.yield"
    inputs = var_operand_def()
    traits = traits_def(IsTerminator(), HasParent(PoolOp))
    assembly_format = "($inputs^ `:` type($inputs))? attr-dict"


TZ_OPS: list[type[Operation]] = [
    PrefillOp, DecodeOp, KvTransferOp, MoeGateOp, MoeExpertOp, MoeMergeOp, AllReduceOp, ToolLookupOp,
    ToolComputeOp, EmbedEncodeOp, AnnSearchOp, MemLoadOp, MemStoreOp, TransferOp, PoolOp, YieldOp,
    KvRetainOp, KvOffloadOp, KvReuseOp,
]
Tz = Dialect("tz", TZ_OPS, [KvType, ActType, CandidateAttr, PlacementAttr])
