"""What every op that stands for work in the agent graph carries, in both dialects.

`id` names the op for plans and reports (a node path such as `research/summarise`, with a `.part` suffix
after decomposition: `think.prefill`); `visits` is its expected executions per request (AgentGraph.visits());
`edge_bytes[i]` is the payload of the edge behind operand i; `join` is `all` when the op waits for every
input. Passes may add `tz.candidates` (estimate-cost) and `tz.place` (apply-plan).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Self

from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    f64,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.irdl import IRDLOperation, ParsePropInAttrDict, opt_prop_def, prop_def
from xdsl.utils.exceptions import VerifyException

from terrazzo.ir.attributes import ActType, CandidateAttr, DataType, DistAttr, KvType, PlacementAttr

VALUE_TYPES = (DataType, KvType, ActType)
DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
SERVING = ("auto", "aggregated", "disaggregated")
PHASES = ("prefill", "decode")
CANDIDATES, PLACE = "tz.candidates", "tz.place"
_HINT_BAD = re.compile(r"[^\w$.-]")


def f64_attr(x: float) -> FloatAttr:
    return FloatAttr(float(x), f64)


def i64_attr(x: int) -> IntegerAttr:
    return IntegerAttr(int(x), i64)


def count_attr(n: float) -> IntegerAttr:
    """Byte and FLOP counts are whole numbers (means rounded up), which also keeps them readable as text."""
    return IntegerAttr(math.ceil(n), i64)


def bytes_array(sizes: Sequence[float]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, [math.ceil(b) for b in sizes])


def name_hint(text: str) -> str:
    """An SSA name derived from an op id: readable printed IR, no meaning of its own."""
    hint = _HINT_BAD.sub(".", text)
    return hint if hint[:1].isalpha() or hint[:1] == "_" else f"v{hint}"


class NodeOp(IRDLOperation):
    """Base of the agent-graph ops; see the module docstring for the common fields."""

    id = prop_def(StringAttr)
    visits = prop_def(FloatAttr)
    join = opt_prop_def(StringAttr)
    edge_bytes = opt_prop_def(DenseArrayBase)

    irdl_options = (ParsePropInAttrDict(),)

    @classmethod
    def make(
        cls, node_id: str, inputs: Sequence[SSAValue], visits: float, edge_bytes: Sequence[float] | None = None,
        join: str | None = None, props: Mapping[str, Attribute] | None = None,
        result_types: Sequence[Attribute | Sequence[Attribute]] | None = None, regions: Sequence = (),
        attrs: Mapping[str, Attribute] | None = None,
    ) -> Self:
        properties: dict[str, Attribute] = {"id": StringAttr(node_id), "visits": f64_attr(visits), **(props or {})}
        if join and join != "any":
            properties["join"] = StringAttr(join)
        if inputs:
            sizes = list(edge_bytes) if edge_bytes is not None else [0.0] * len(inputs)
            properties["edge_bytes"] = bytes_array(sizes)
        op = cls(operands=[list(inputs)], result_types=result_types if result_types is not None else [DataType()],
                 properties=properties, attributes=dict(attrs or {}), regions=list(regions))
        for i, res in enumerate(op.results):
            res.name_hint = name_hint(node_id if len(op.results) == 1 else f"{node_id}.{i}")
        return op

    # Accessors -------------------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.id.data

    @property
    def visit_count(self) -> float:
        return self.visits.value.data

    @property
    def bytes_in(self) -> list[float]:
        if self.edge_bytes is None:
            return [0.0] * len(self.operands)
        return [float(x) for x in self.edge_bytes.get_values()]

    def set_bytes_in(self, sizes: Sequence[float]) -> None:
        if sizes:
            self.properties["edge_bytes"] = bytes_array(sizes)
        else:
            self.properties.pop("edge_bytes", None)

    @property
    def join_mode(self) -> str:
        return self.join.data if self.join is not None else "any"

    @property
    def candidates(self) -> list[CandidateAttr]:
        attr = self.attributes.get(CANDIDATES)
        return list(attr.data) if isinstance(attr, ArrayAttr) else []

    @property
    def placement(self) -> PlacementAttr | None:
        attr = self.attributes.get(PLACE)
        return attr if isinstance(attr, PlacementAttr) else None

    def common_props(self) -> dict[str, Attribute]:
        """The properties a decomposition copies to each op it makes from this one."""
        return {k: v for k, v in self.properties.items() if k not in ("id", "visits", "join", "edge_bytes")}

    # Verification ----------------------------------------------------------------------------------------

    def fail(self, what: str) -> VerifyException:
        return VerifyException(f"{self.name} '{self.node_id}': {what}")

    def verify_(self) -> None:
        if not self.node_id or _HINT_BAD.sub("", self.node_id) == "":
            raise self.fail("id must be a non-empty node path")
        if not (math.isfinite(self.visit_count) and self.visit_count >= 0):
            raise self.fail(f"visits = {self.visit_count} must be a finite number >= 0")
        if self.join_mode not in ("any", "all"):
            raise self.fail(f"join = '{self.join_mode}' must be 'any' or 'all'")
        if self.edge_bytes is not None:
            sizes = self.bytes_in
            if len(sizes) != len(self.operands):
                raise self.fail(f"edge_bytes has {len(sizes)} entries for {len(self.operands)} operands")
            if self.edge_bytes.elt_type != i64 or any(b < 0 for b in sizes):
                raise self.fail("edge_bytes must be an array<i64> of byte counts >= 0")
        for i, operand in enumerate(self.operands):
            if not isinstance(operand.type, VALUE_TYPES):
                raise self.fail(f"operand {i} has type {operand.type}; expected !agent.data, !tz.kv or !tz.act")
        cands = self.attributes.get(CANDIDATES)
        if cands is not None and not (
            isinstance(cands, ArrayAttr) and all(isinstance(c, CandidateAttr) for c in cands.data)
        ):
            raise self.fail(f"{CANDIDATES} must be an array of #tz.cand")
        place = self.attributes.get(PLACE)
        if place is not None and not isinstance(place, PlacementAttr):
            raise self.fail(f"{PLACE} must be a #tz.place")


def check_choice(op: NodeOp, attr: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise op.fail(f"{attr} = '{value}' is not one of {', '.join(allowed)}")


def check_dist(op: NodeOp, attr: str, dist: DistAttr, positive: bool = False) -> None:
    if positive and dist.mean_value <= 0:
        raise op.fail(f"{attr} has mean {dist.mean_value}; it must be positive")


def check_positive(op: NodeOp, attr: str, value: float, minimum: float = 0.0) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise op.fail(f"{attr} = {value} must be a finite number >= {minimum:g}")


def int_prop(op: Operation, name: str) -> int:
    attr = op.properties[name]
    assert isinstance(attr, IntegerAttr), f"{op.name}: '{name}' is not an integer"
    return attr.value.data


def float_prop(op: Operation, name: str) -> float:
    attr = op.properties[name]
    assert isinstance(attr, FloatAttr | IntegerAttr), f"{op.name}: '{name}' is not a number"
    return attr.value.data


def mean_prop(op: Operation, name: str) -> float:
    """The mean of a distribution property (#agent.dist)."""
    attr = op.properties[name]
    assert isinstance(attr, DistAttr), f"{op.name}: '{name}' is not a #agent.dist"
    return attr.mean_value


def str_prop(op: Operation, name: str) -> str | None:
    attr = op.properties.get(name)
    return attr.data if isinstance(attr, StringAttr) else None
