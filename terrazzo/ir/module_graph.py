"""Questions about a module as a graph: which ops are placed, which edges exist, are two modules the same."""

from __future__ import annotations

from collections.abc import Iterator

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, BlockArgument, Operation, OpResult, SSAValue

from terrazzo.ir.candidate_pricing import PLACEABLE
from terrazzo.ir.dialects.agent_dialect import InputOp, OutputOp, SubagentOp
from terrazzo.ir.dialects.granular_dialect import KvTransferOp, PoolOp, TransferOp, YieldOp
from terrazzo.ir.dialects.node_op import NodeOp

INPUT, OUTPUT = "^input", "^output"


def placeable_ops(module: Operation) -> Iterator[NodeOp]:
    """Ops that run on a device of their own and so need a placement (compute ops, not routers or riders)."""
    for op in module.walk():
        if isinstance(op, PLACEABLE):
            yield op


def is_transfer(op: Operation) -> bool:
    return isinstance(op, TransferOp | KvTransferOp)


def source(value: SSAValue, through_transfers: bool = False) -> str:
    """The id of the op a value comes from, looking through pool boundaries (and transfers, if asked).

    A sub-agent's block argument comes from the sub-agent itself (the edge enters through it); the request
    is INPUT.
    """
    while True:
        if isinstance(value, BlockArgument):
            owner = value.block.parent_op()
            if isinstance(owner, PoolOp):
                value = owner.inputs[value.index]
                continue
            assert isinstance(owner, SubagentOp), f"unexpected block argument owner {owner}"
            return owner.node_id
        assert isinstance(value, OpResult)
        op = value.op
        if isinstance(op, PoolOp):
            term = op.body.block.last_op
            assert isinstance(term, YieldOp)
            value = term.operands[value.index]
            continue
        if through_transfers and is_transfer(op):
            value = op.operands[0]
            continue
        if isinstance(op, InputOp):
            return INPUT
        assert isinstance(op, NodeOp), f"unexpected producer {op.name}"
        return op.node_id


def data_edges(module: ModuleOp, through_transfers: bool = False) -> list[tuple[str, str]]:
    """Every (producer id, consumer id) use; sub-agents are nodes whose outputs enter them as consumers."""
    edges: list[tuple[str, str]] = []
    for op in module.walk():
        if through_transfers and is_transfer(op):
            continue
        if isinstance(op, NodeOp):
            edges += [(source(v, through_transfers), op.node_id) for v in op.operands]
        elif isinstance(op, OutputOp):
            owner = op.parent_op()
            dst = owner.node_id if isinstance(owner, SubagentOp) else OUTPUT
            edges += [(source(v, through_transfers), dst) for v in op.operands]
    return edges


def structurally_equal(a: Operation, b: Operation) -> bool:
    """xDSL's is_structurally_equivalent, primed with the positional value map so forward uses compare too.

    In a graph region an op may use a value defined later (a loop's repeat); the plain check maps values only
    once it has passed their definition, so it would call any cycle unequal.
    """
    context: dict = {}
    ops_a, ops_b = list(a.walk()), list(b.walk())
    if len(ops_a) != len(ops_b):
        return False
    for x, y in zip(ops_a, ops_b, strict=True):
        if len(x.results) != len(y.results) or len(x.regions) != len(y.regions):
            return False
        context.update(zip(x.results, y.results, strict=True))
        for ra, rb in zip(x.regions, y.regions, strict=True):
            blocks_a, blocks_b = list(ra.blocks), list(rb.blocks)
            if len(blocks_a) != len(blocks_b):
                return False
            for ba, bb in zip(blocks_a, blocks_b, strict=True):
                _map_block(context, ba, bb)
    return a.is_structurally_equivalent(b, context)


def _map_block(context: dict, a: Block, b: Block) -> None:
    context[a] = b
    context.update(zip(a.args, b.args, strict=False))
