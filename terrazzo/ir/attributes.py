"""Types and attributes shared by the `agent` and `tz` dialects.

Values: `!agent.data` (a message between nodes), `!tz.kv` (a KV cache), `!tz.act` (activations inside one
LLM phase). Attributes: `#agent.dist` (a random quantity: its mean for the planner and its law for the
simulator), `#tz.cand` (one candidate device configuration with its cost: paper §3.1's θ and t) and
`#tz.place` (where the plan put an op). The last two print as `key = value` records so that text written by
hand stays readable and every field is named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Self

from pydantic import ValidationError
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FloatData, IntAttr, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from terrazzo.spec.distributions import Dist

DIST_PARAMS = ("value", "low", "high", "mean", "std", "cv")
LINK_KINDS = ("scale-up", "scale-out", "host")


def fmt_float(x: float) -> str:
    """Shortest text that reads back to the same double and lexes as an MLIR float (it needs a '.')."""
    if math.isinf(x) and x > 0:
        return "inf"
    text = repr(float(x))
    if "." not in text:
        mantissa, _, exp = text.partition("e")
        text = f"{mantissa}.0" + (f"e{exp}" if exp else "")
    return text


def parse_float(parser: AttrParser) -> float:
    if parser.parse_optional_keyword("inf"):
        return math.inf
    return float(parser.parse_number())


@irdl_attr_definition
class DataType(ParametrizedAttribute, TypeAttribute):
    """A message flowing along an agent edge (text, audio, documents): its size rides on the consumer."""

    name = "agent.data"


@irdl_attr_definition
class KvType(ParametrizedAttribute, TypeAttribute):
    """The KV cache a prefill leaves for its decode; moving it is a `tz.kv.transfer`."""

    name = "tz.kv"


@irdl_attr_definition
class ActType(ParametrizedAttribute, TypeAttribute):
    """Hidden states between the ops of one decomposed MoE phase."""

    name = "tz.act"


@irdl_attr_definition
class DistAttr(ParametrizedAttribute):
    """`#agent.dist<900.0, lognormal, mean = 900.0, cv = 0.5>`: the mean the planner uses, then the law the
    simulator samples (spec.distributions.Dist's kind and parameters); the verifier checks that they agree."""

    name = "agent.dist"

    kind: StringAttr
    mean: FloatData
    params: DictionaryAttr

    @staticmethod
    def of(dist: Dist) -> DistAttr:
        params: dict[str, Attribute] = {}
        if dist.dist != "fixed":
            params = {p: FloatData(getattr(dist, p)) for p in DIST_PARAMS if getattr(dist, p) is not None}
            for p in ("values", "weights"):
                if getattr(dist, p) is not None:
                    params[p] = ArrayAttr([FloatData(v) for v in getattr(dist, p)])
        return DistAttr(StringAttr(dist.dist), FloatData(dist.expected), DictionaryAttr(params))

    @property
    def mean_value(self) -> float:
        return self.mean.data

    def to_dist(self) -> Dist:
        """The spec-level distribution, for the simulator; raises ValueError when the parameters do not fit."""
        fields: dict[str, object] = {"dist": self.kind.data}
        if self.kind.data == "fixed":
            fields["value"] = self.mean.data
        for key, val in self.params.data.items():
            fields[key] = ([v.data for v in val.data] if isinstance(val, ArrayAttr)
                          else val.data if isinstance(val, FloatData) else None)
        try:
            return Dist.model_validate(fields)
        except ValidationError as exc:
            raise ValueError(exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")) from None

    def verify(self) -> None:
        for key, val in self.params.data.items():
            ok = isinstance(val, FloatData) or (
                isinstance(val, ArrayAttr) and all(isinstance(v, FloatData) for v in val.data))
            if not ok:
                raise VerifyException(f"#agent.dist parameter '{key}' must be a number or a list of numbers")
        try:
            expected = self.to_dist().expected
        except ValueError as exc:
            raise VerifyException(f"#agent.dist<{self.kind.data}>: {exc}") from None
        if not math.isclose(expected, self.mean.data, rel_tol=1e-9, abs_tol=1e-12):
            raise VerifyException(
                f"#agent.dist<{self.kind.data}> mean = {fmt_float(self.mean.data)} disagrees with the "
                f"distribution's expected value {fmt_float(expected)}")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            mean = parse_float(parser)
            parser.parse_punctuation(",")
            kind = parser.parse_identifier("distribution kind")
            params: dict[str, Attribute] = {}
            while parser.parse_optional_punctuation(","):
                key = parser.parse_identifier("distribution parameter")
                parser.parse_punctuation("=")
                items = parser.parse_optional_comma_separated_list(
                    parser.Delimiter.SQUARE, lambda: parse_float(parser))
                params[key] = ArrayAttr([FloatData(v) for v in items]) if items is not None else FloatData(
                    parse_float(parser))
        out = (StringAttr(kind), FloatData(mean), DictionaryAttr(params))
        try:
            cls(*out)
        except VerifyException as exc:
            parser.raise_error(str(exc))
        return out

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{fmt_float(self.mean.data)}, {self.kind.data}")
        for key, val in self.params.data.items():
            if isinstance(val, ArrayAttr):
                text = "[" + ", ".join(fmt_float(v.data) for v in val.data) + "]"
            else:
                text = fmt_float(val.data) if isinstance(val, FloatData) else str(val)
            printer.print_string(f", {key} = {text}")
        printer.print_string(">")


class RecordAttr(ParametrizedAttribute):
    """An attribute printed as `<key = value, ...>` in declaration order; fields equal to their default are
    left out. Subclasses list `(name, python type, default or None)` in `FIELDS`, matching their parameters."""

    FIELDS: ClassVar[tuple[tuple[str, type, str | float | None], ...]] = ()

    @classmethod
    def make(cls, **values: str | float) -> Self:
        params: list[Attribute] = []
        for key, typ, default in cls.FIELDS:
            val = values.get(key, default)
            if val is None:
                raise ValueError(f"#{cls.name} needs '{key}'")
            params.append(StringAttr(str(val)) if typ is str else IntAttr(int(val)) if typ is int
                          else FloatData(float(val)))
        return cls(*params)

    def get(self, key: str) -> object:
        return getattr(self, key).data

    def number(self, key: str) -> float:
        """A numeric field's value (an int or float field in FIELDS)."""
        return float(getattr(self, key).data)

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        seen: dict[str, str | float] = {}
        with parser.in_angle_brackets():
            first = True
            while first or parser.parse_optional_punctuation(","):
                first = False
                key = parser.parse_identifier(f"field of #{cls.name}")
                typ = next((t for k, t, _ in cls.FIELDS if k == key), None)
                if typ is None:
                    parser.raise_error(f"#{cls.name} has no field '{key}'; fields are "
                                       + ", ".join(k for k, _, _ in cls.FIELDS))
                parser.parse_punctuation("=")
                seen[key] = (parser.parse_str_literal() if typ is str else parser.parse_integer() if typ is int
                             else parse_float(parser))
        try:
            return cls.make(**seen).parameters
        except (ValueError, VerifyException) as exc:
            parser.raise_error(str(exc))

    def print_parameters(self, printer: Printer) -> None:
        parts = []
        for key, typ, default in self.FIELDS:
            val = self.get(key)
            if default is not None and val == default:
                continue
            text = f'"{val}"' if typ is str else str(val) if typ is int else fmt_float(self.number(key))
            parts.append(f"{key} = {text}")
        printer.print_string("<" + ", ".join(parts) + ">")


@irdl_attr_definition
class CandidateAttr(RecordAttr):
    """One way to run an op: device type and configuration with its latency, rate, memory and price.

    `latency_s` is what an SLA limits (TTFT for prefill, TBT for decode, the whole op otherwise); `span_s` is
    the op's share of a request's end-to-end time; `requests_per_s` is one replica's sustained rate; `usd_h`
    prices the whole replica (tp·pp devices). A non-empty `infeasible` says why the candidate cannot be used.
    """

    name = "tz.cand"
    FIELDS = (
        ("device", str, None), ("tp", int, 1), ("pp", int, 1), ("batch", int, 1), ("latency_s", float, None),
        ("span_s", float, None), ("requests_per_s", float, None), ("tokens_per_s", float, 0.0),
        ("memory_bytes", float, None), ("usd_h", float, None), ("bound", str, ""), ("infeasible", str, ""),
        ("source", str, "analytic"),  # or fitted:<profile>, profile:<profile>#<points> (cost/calibration.py)
        ("engine", str, "builtin"), ("engine_version", str, ""),  # the serving engine an LLM estimate is for
    )

    device: StringAttr
    tp: IntAttr
    pp: IntAttr
    batch: IntAttr
    latency_s: FloatData
    span_s: FloatData
    requests_per_s: FloatData
    tokens_per_s: FloatData
    memory_bytes: FloatData
    usd_h: FloatData
    bound: StringAttr
    infeasible: StringAttr
    source: StringAttr
    engine: StringAttr
    engine_version: StringAttr

    @property
    def feasible(self) -> bool:
        return not self.infeasible.data

    @property
    def usd_per_request(self) -> float:
        rps = self.requests_per_s.data
        return self.usd_h.data / 3600 / rps if rps > 0 else math.inf

    def verify(self) -> None:
        for key in ("tp", "pp", "batch"):
            if self.number(key) < 1:
                raise VerifyException(f"#tz.cand {key} = {self.get(key)} must be at least 1")
        for key in ("latency_s", "span_s", "requests_per_s", "tokens_per_s", "memory_bytes", "usd_h"):
            val = self.number(key)
            if not val >= 0:
                raise VerifyException(f"#tz.cand {key} = {val} must be a non-negative number")
        if self.feasible and (math.isinf(self.latency_s.data) or self.requests_per_s.data <= 0):
            raise VerifyException("a feasible #tz.cand needs a finite latency_s and requests_per_s > 0; "
                                  "set 'infeasible' to the reason otherwise")


@irdl_attr_definition
class PlacementAttr(RecordAttr):
    """Where the plan put an op: its pool (devices of one type that host it) and each replica's configuration."""

    name = "tz.place"
    FIELDS = (
        ("pool", str, None), ("device", str, None), ("tp", int, 1), ("pp", int, 1), ("batch", int, 1),
        ("replicas", int, 1),
    )

    pool: StringAttr
    device: StringAttr
    tp: IntAttr
    pp: IntAttr
    batch: IntAttr
    replicas: IntAttr

    def verify(self) -> None:
        for key in ("tp", "pp", "batch", "replicas"):
            if self.number(key) < 1:
                raise VerifyException(f"#tz.place {key} = {self.get(key)} must be at least 1")
        if not self.pool.data or not self.device.data:
            raise VerifyException("#tz.place needs a non-empty pool and device")
