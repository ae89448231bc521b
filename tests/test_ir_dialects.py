"""Verifiers reject malformed IR, naming the op and the attribute at fault."""

from __future__ import annotations

import math
import re

import pytest
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, FloatData, StringAttr
from xdsl.utils.exceptions import VerifyException

from terrazzo.errors import IRError
from terrazzo.ir.attributes import CandidateAttr, DistAttr, PlacementAttr, fmt_float
from terrazzo.ir.context import parse_module, print_module
from terrazzo.spec.distributions import Dist

GOOD = """builtin.module {
  agent.graph @g {
    %input = agent.input
    %a = agent.llm.call "a"(%input) {model = "llama-3-8b", dtype = "bf16", input_tokens = #agent.dist<512.0, fixed>,
      output_tokens = #agent.dist<900.0, lognormal, mean = 900.0, cv = 0.5>, serving = "auto", visits = 1.0 : f64,
      edge_bytes = array<i64: 2048>}
    %b.x, %b.y = agent.branch "b"(%a) {probs = array<f64: 0.25, 0.75>, visits = 1.0 : f64,
      edge_bytes = array<i64: 0>} : !agent.data, !agent.data
    %r = agent.memory.lookup "r"(%b.x) {index_vectors = 1000 : i64, dimension = 384 : i64, k = 5 : i64,
      index = "ivf", embed_model = "all-minilm-l6-v2", query_tokens = #agent.dist<32.0, fixed>, visits = 0.25 : f64}
    %k = tz.llm.prefill "k.prefill"(%r : !agent.data) {model = "llama-3-8b", dtype = "bf16",
      input_tokens = #agent.dist<512.0, fixed>, output_tokens = #agent.dist<64.0, fixed>, serving = "auto",
      visits = 0.25 : f64} : !tz.kv
    %t = tz.kv.transfer "k.kv"(%k : !tz.kv) {bytes = 1024 : i64, visits = 0.25 : f64} : !tz.kv
    %d = tz.llm.decode "k.decode"(%t : !tz.kv) {model = "llama-3-8b", dtype = "bf16",
      input_tokens = #agent.dist<512.0, fixed>, output_tokens = #agent.dist<64.0, fixed>, serving = "auto",
      visits = 0.25 : f64} : !agent.data
    agent.output %b.y, %d : !agent.data, !agent.data
  }
}
"""


def test_the_reference_module_is_valid() -> None:
    module = parse_module(GOOD)
    assert print_module(parse_module(print_module(module))) == print_module(module)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('dtype = "bf16", input_tokens = #agent.dist<512.0, fixed>,\n      output_tokens',
     'dtype = "fp12", input_tokens = #agent.dist<512.0, fixed>,\n      output_tokens',
     "agent.llm.call 'a': dtype = 'fp12' is not one of"),
    ('serving = "auto", visits = 1.0 : f64,\n      edge', 'serving = "split", visits = 1.0 : f64,\n      edge',
     "agent.llm.call 'a': serving = 'split'"),
    ("probs = array<f64: 0.25, 0.75>", "probs = array<f64: 0.25, 0.5>", "agent.branch 'b': probs"),
    ("probs = array<f64: 0.25, 0.75>", "probs = array<f64: 1.0>", "agent.branch 'b': probs has 1 entries for 2 arms"),
    ("edge_bytes = array<i64: 2048>", "edge_bytes = array<i64: 2048, 1>",
     "agent.llm.call 'a': edge_bytes has 2 entries for 1 operands"),
    ("k = 5 : i64", "k = 5000 : i64", "agent.memory.lookup 'r': k = 5000 exceeds index_vectors = 1000"),
    ('index = "ivf"', 'index = "lsh"', "agent.memory.lookup 'r': index = 'lsh'"),
    ('visits = 0.25 : f64}\n    %k', 'visits = -1.0 : f64}\n    %k', "agent.memory.lookup 'r': visits = -1.0"),
    ("#agent.dist<900.0, lognormal", "#agent.dist<901.0, lognormal", "mean = 901.0 disagrees"),
    ("input_tokens = #agent.dist<512.0, fixed>,\n      output_tokens = #agent.dist<900.0",
     "input_tokens = #agent.dist<512.0, gamma>,\n      output_tokens = #agent.dist<900.0", "gamma"),
    ('%t = tz.kv.transfer "k.kv"(%k : !tz.kv)', '%t = tz.kv.transfer "k.kv"(%r : !agent.data)',
     "tz.kv.transfer 'k.kv': takes exactly one !tz.kv operand"),
    ('"k.decode"(%t : !tz.kv)', '"k.decode"(%r : !agent.data)', "tz.llm.decode 'k.decode': needs a !tz.kv"),
    ('%d = tz.llm.decode "k.decode"', '%d = tz.llm.decode "a"', "id 'a' is used by both"),
    ("    %input = agent.input\n", "    %input = agent.input\n    %input2 = agent.input\n", "exactly one agent.input"),
])
def test_malformed_ir_is_rejected(old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(IRError) as err:
        parse_module(GOOD.replace(old, new, 1))
    assert message in str(err.value)


def test_annotations_are_typed() -> None:
    bad = GOOD.replace('edge_bytes = array<i64: 2048>}', 'edge_bytes = array<i64: 2048>, tz.place = "gpu"}')
    with pytest.raises(IRError, match=re.escape("agent.llm.call 'a': tz.place must be a #tz.place")):
        parse_module(bad)
    bad = GOOD.replace('edge_bytes = array<i64: 2048>}', 'edge_bytes = array<i64: 2048>, tz.candidates = [1 : i64]}')
    with pytest.raises(IRError, match=re.escape("tz.candidates must be an array of #tz.cand")):
        parse_module(bad)


def test_record_attributes_check_their_fields() -> None:
    with pytest.raises(VerifyException, match=re.escape("#tz.place tp = 0 must be at least 1")):
        PlacementAttr.make(pool="p", device="h100", tp=0)
    with pytest.raises(VerifyException, match=re.escape("a feasible #tz.cand needs a finite latency_s")):
        CandidateAttr.make(device="h100", latency_s=math.inf, span_s=1.0, requests_per_s=1.0, memory_bytes=0.0,
                           usd_h=1.0)
    bad = GOOD.replace('edge_bytes = array<i64: 2048>}',
                       'edge_bytes = array<i64: 2048>, tz.place = #tz.place<pool = "p", device = "h100", rack = 3>}')
    with pytest.raises(IRError, match=re.escape("#tz.place has no field 'rack'")):
        parse_module(bad)


def test_dist_attr_keeps_the_distribution() -> None:
    for dist in (Dist.fixed(3.0), Dist(dist="lognormal", mean=900, cv=0.5), Dist(dist="normal", mean=10, std=4),
                 Dist(dist="empirical", values=[1, 2, 9], weights=[1, 1, 2]), Dist(dist="uniform", low=1, high=3)):
        attr = DistAttr.of(dist)
        assert attr.to_dist() == dist
        assert attr.mean_value == pytest.approx(dist.expected)
    with pytest.raises(VerifyException, match=re.escape("parameter 'cv' must be a number")):
        DistAttr(StringAttr("lognormal"), FloatData(1.0), DictionaryAttr({"cv": ArrayAttr([StringAttr("x")])}))


@pytest.mark.parametrize("x", [0.0, 1.0, 1e-05, 123456789.0, 1.4285714285714286, 1e300, 2.5e-310, math.inf])
def test_float_text_round_trips(x: float) -> None:
    text = fmt_float(x)
    assert "." in text or text == "inf"
    assert float(text) == x
