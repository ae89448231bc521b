"""The `agent` dialect: one op per node of an agent graph (paper §2.4, Table 1), data edges as SSA uses.

An `agent.graph` body is a graph region (as in CIRCT's `hw.module`): ops may use values defined later, which is
how a loop's repeat edge closes its cycle. Control flow is dataflow routing, after MLIR's `handshake` dialect:
`agent.branch` has one result per arm with its probability, `agent.loop` has a `repeat` result (to its body,
at most `bound` times per entry) and an `exit` result. A sub-agent is an `agent.subagent` op whose region holds
the inner graph; its block arguments are its operands and its `agent.output` operands make its result.
"""

from __future__ import annotations

import math

from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, FloatAttr, IntegerAttr, StringAttr, SymbolNameConstraint
from xdsl.ir import Dialect, Operation, Region
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
from xdsl.traits import IsTerminator, SymbolOpInterface
from xdsl.utils.exceptions import VerifyException

from terrazzo.ir.attributes import DataType, DistAttr
from terrazzo.ir.dialects.node_op import (
    DTYPES,
    SERVING,
    NodeOp,
    check_choice,
    check_dist,
    check_positive,
    float_prop,
    int_prop,
    str_prop,
)
from terrazzo.ir.dialects.prefix_props import verify_prefix

WORK_FORMAT = "$id (`(` $inputs^ `)`)? attr-dict"
INDEXES = ("flat", "ivf", "hnsw")


class AgentOp(NodeOp):
    """An agent-level op: inputs and its one result are messages (`!agent.data`)."""

    inputs = var_operand_def(DataType)
    out = result_def(DataType)
    assembly_format = WORK_FORMAT


@irdl_op_definition
class LlmCallOp(AgentOp):
    """One LLM call; decompose-llm splits it into prefill, KV transfer and decode unless `serving` is aggregated."""

    name = "agent.llm.call"
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


@irdl_op_definition
class ToolInvokeOp(AgentOp):
    """An external call: `latency_s` is wall time waiting on it, `cpu_s` the host CPU it burns."""

    name = "agent.tool.invoke"
    protocol = prop_def(StringAttr)
    endpoint = opt_prop_def(StringAttr)
    function = opt_prop_def(StringAttr)
    latency_s = prop_def(DistAttr)
    cpu_s = prop_def(DistAttr)
    request_bytes = prop_def(IntegerAttr)
    response_bytes = prop_def(IntegerAttr)

    def verify_(self) -> None:
        super().verify_()
        verify_tool(self)


def verify_tool(op: NodeOp) -> None:
    protocol = str_prop(op, "protocol") or ""
    check_choice(op, "protocol", protocol, ("http", "python"))
    if protocol == "http" and "endpoint" not in op.properties:
        raise op.fail("an http tool needs 'endpoint'")
    if protocol == "python" and "function" not in op.properties:
        raise op.fail("a python tool needs 'function'")
    for key in ("request_bytes", "response_bytes"):
        if key in op.properties:
            check_positive(op, key, float_prop(op, key))


@irdl_op_definition
class MemoryLoadOp(AgentOp):
    name = "agent.memory.load"
    store = prop_def(StringAttr)
    data_bytes = prop_def(DistAttr)


@irdl_op_definition
class MemoryStoreOp(AgentOp):
    name = "agent.memory.store"
    store = prop_def(StringAttr)
    data_bytes = prop_def(DistAttr)


@irdl_op_definition
class MemoryLookupOp(AgentOp):
    """Vector search: decompose-memory splits it into the query's embedding and the index search."""

    name = "agent.memory.lookup"
    index_vectors = prop_def(IntegerAttr)
    dimension = prop_def(IntegerAttr)
    k = prop_def(IntegerAttr)
    index = prop_def(StringAttr)
    embed_model = prop_def(StringAttr)
    query_tokens = prop_def(DistAttr)

    def verify_(self) -> None:
        super().verify_()
        verify_index(self)


def verify_index(op: NodeOp) -> None:
    check_choice(op, "index", str_prop(op, "index") or "", INDEXES)
    for key in ("index_vectors", "dimension", "k"):
        check_positive(op, key, int_prop(op, key), 1)
    if int_prop(op, "k") > int_prop(op, "index_vectors"):
        raise op.fail(f"k = {int_prop(op, 'k')} exceeds index_vectors = {int_prop(op, 'index_vectors')}")


@irdl_op_definition
class EmbedOp(AgentOp):
    name = "agent.embed"
    model = prop_def(StringAttr)
    tokens = prop_def(DistAttr)


@irdl_op_definition
class SttOp(AgentOp):
    name = "agent.stt"
    model = prop_def(StringAttr)
    audio_s = prop_def(DistAttr)
    output_tokens = prop_def(DistAttr)


@irdl_op_definition
class TtsOp(AgentOp):
    """Text to speech: CPU time per token unless `model` names one."""

    name = "agent.tts"
    model = opt_prop_def(StringAttr)
    input_tokens = prop_def(DistAttr)
    cpu_s_per_token = prop_def(FloatAttr)

    def verify_(self) -> None:
        super().verify_()
        check_positive(self, "cpu_s_per_token", float_prop(self, "cpu_s_per_token"))


@irdl_op_definition
class ComputeOp(AgentOp):
    name = "agent.compute"
    function = opt_prop_def(StringAttr)
    cpu_s = prop_def(DistAttr)


@irdl_op_definition
class BranchOp(NodeOp):
    """Exclusive choice: each visit leaves by exactly one result, result i with probability `probs[i]`."""

    name = "agent.branch"
    inputs = var_operand_def(DataType)
    arms = var_result_def(DataType)
    probs = prop_def(DenseArrayBase)
    conditions = opt_prop_def(ArrayAttr[StringAttr])
    assembly_format = WORK_FORMAT + " `:` type($arms)"

    @property
    def probabilities(self) -> list[float]:
        return [float(p) for p in self.probs.get_values()]

    def verify_(self) -> None:
        super().verify_()
        probs = self.probabilities
        if len(self.arms) < 2:
            raise self.fail(f"a branch needs at least two arms, it has {len(self.arms)}")
        if len(probs) != len(self.arms):
            raise self.fail(f"probs has {len(probs)} entries for {len(self.arms)} arms")
        if any(not 0 <= p <= 1 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise self.fail(f"probs {probs} must each lie in [0, 1] and sum to 1")
        if self.conditions is not None and len(self.conditions.data) != len(self.arms):
            raise self.fail(f"conditions has {len(self.conditions.data)} entries for {len(self.arms)} arms")


@irdl_op_definition
class LoopOp(NodeOp):
    """Bounded repetition: `repeat` feeds the body at most `bound` times per entry, `exit` takes the rest.

    `repeat_share` is the fraction of arrivals that repeat (AgentGraph.repeat_shares()), which with the
    branch probabilities fixes the expected visits the ops record.
    """

    name = "agent.loop"
    inputs = var_operand_def(DataType)
    repeat = result_def(DataType)
    exit = result_def(DataType)
    bound = prop_def(IntegerAttr)
    repeat_share = prop_def(FloatAttr)
    assembly_format = WORK_FORMAT

    def verify_(self) -> None:
        super().verify_()
        check_positive(self, "bound", int_prop(self, "bound"), 1)
        share = float_prop(self, "repeat_share")
        if not 0 <= share <= 1:
            raise self.fail(f"repeat_share = {share} must lie in [0, 1]")


@irdl_op_definition
class SubagentOp(NodeOp):
    """A node that is itself an agent; the region's block has one argument per operand."""

    name = "agent.subagent"
    inputs = var_operand_def(DataType)
    out = result_def(DataType)
    body = region_def("single_block")
    assembly_format = "$id (`(` $inputs^ `)`)? attr-dict-with-keyword $body"

    def verify_(self) -> None:
        super().verify_()
        block = self.body.block
        if len(block.args) != len(self.inputs):
            raise self.fail(f"its body has {len(block.args)} arguments for {len(self.inputs)} operands")
        if not isinstance(block.last_op, OutputOp):
            raise self.fail("its body must end with agent.output")


@irdl_op_definition
class InputOp(IRDLOperation):
    """The request entering the agent; entry nodes (no incoming edges) use it."""

    name = "agent.input"
    out = result_def(DataType)
    assembly_format = "attr-dict"


@irdl_op_definition
class OutputOp(IRDLOperation):
    """What leaves a graph or sub-agent: the values of its sink nodes."""

    name = "agent.output"
    inputs = var_operand_def()
    traits = traits_def(IsTerminator())
    assembly_format = "($inputs^ `:` type($inputs))? attr-dict"


@irdl_op_definition
class GraphOp(IRDLOperation):
    """A whole agent: one graph region that ends in agent.output; op ids are unique across it."""

    name = "agent.graph"
    sym_name = prop_def(SymbolNameConstraint())
    description = opt_prop_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(SymbolOpInterface())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$sym_name attr-dict-with-keyword $body"

    def __init__(self, name: str, body: Region, description: str | None = None) -> None:
        props = {"sym_name": StringAttr(name)}
        if description:
            props["description"] = StringAttr(description)
        super().__init__(properties=props, regions=[body])

    def verify_(self) -> None:
        block = self.body.block
        if not isinstance(block.last_op, OutputOp):
            raise VerifyException(f"agent.graph @{self.sym_name.data}: its body must end with agent.output")
        inputs = [op for op in block.ops if isinstance(op, InputOp)]
        if len(inputs) != 1:
            raise VerifyException(
                f"agent.graph @{self.sym_name.data}: needs exactly one agent.input, has {len(inputs)}")
        seen: dict[str, str] = {}
        for op in self.walk():
            if isinstance(op, NodeOp):
                if op.node_id in seen:
                    raise VerifyException(f"agent.graph @{self.sym_name.data}: id '{op.node_id}' is used by both "
                                          f"{seen[op.node_id]} and {op.name}")
                seen[op.node_id] = op.name


AGENT_OPS: list[type[Operation]] = [
    GraphOp, InputOp, OutputOp, LlmCallOp, ToolInvokeOp, MemoryLoadOp, MemoryStoreOp, MemoryLookupOp, EmbedOp,
    SttOp, TtsOp, ComputeOp, BranchOp, LoopOp, SubagentOp,
]
Agent = Dialect("agent", AGENT_OPS, [DataType, DistAttr])
