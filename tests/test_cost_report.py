"""`terrazzo cost`: every figure with its source and the range of the model's cross-validated error."""

from __future__ import annotations

import pytest
import yaml
from rich.console import Console

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.engines import Engine
from terrazzo.cost.cost_report import cost_report, parse_engine
from terrazzo.cost.serving_model import FIT_FILE
from terrazzo.errors import CostError

CAT = load_catalog()


def _text(report) -> str:
    console = Console(width=250, record=True)
    console.print(report.table())
    return console.export_text()


def test_each_figure_names_its_source_and_range():
    r = cost_report(CAT, "llama-3-70b", "mi300x", "fp8", 2048, 512, 8, 1, 0.25, 0.02, "paper-2507.19635")
    assert r.engine == "vllm-0.10.2"  # AMD's default engine, stated
    assert r.tbt_source.startswith("fitted:serving_fit.yaml#amd/vllm/")
    lo, hi = r.tbt_spread
    # the range is the cross-validated p10..p90 of AMD/vLLM decode points (it need not bracket 1: a biased
    # phase shows its bias in the range)
    shipped = yaml.safe_load(FIT_FILE.read_text())["uncertainty"]["amd/vllm"]["decode"]
    assert 0 < lo < hi and (lo, hi) == (shipped[0], shipped[1])
    text = _text(r)
    assert "p10..p90" in text and "fitted:serving_fit.yaml#amd/vllm/" in text and "vllm-0.10.2" in text


def test_the_engine_is_an_input_of_the_estimate():
    old = cost_report(CAT, "llama-3-8b", "h100", "fp8", 2048, 512, 1, 1, 0.25, 0.02, "paper-2507.19635",
                      parse_engine("trtllm:0.15.0"))
    new = cost_report(CAT, "llama-3-8b", "h100", "fp8", 2048, 512, 1, 1, 0.25, 0.02, "paper-2507.19635",
                      parse_engine("trtllm:1.0"))
    assert "trtllm/<1.0/" in old.tbt_source and "trtllm/>=1.0/" in new.tbt_source
    assert old.tbt_b1_s != new.tbt_b1_s


def test_an_engine_without_a_fit_falls_back_to_its_vendor_and_says_so():
    r = cost_report(CAT, "llama-3-8b", "h100", "fp8", 2048, 512, 1, 1, 0.25, 0.02, "paper-2507.19635",
                    parse_engine("sglang"))
    assert "nvidia/*/*/dense (no fit for nvidia/sglang/" in r.tbt_source


def test_a_cpu_keeps_the_analytic_roofline_and_says_its_error_is_unknown():
    r = cost_report(CAT, "llama-3-8b", "xeon-8592", "bf16", 512, 128, 1, 1, 10.0, 1.0, "paper-2507.19635")
    assert r.tbt_source == "analytic" and r.tbt_spread is None and r.engine == ""
    assert "error not known" in _text(r)


def test_an_unknown_engine_is_a_clear_error():
    assert parse_engine("vllm:0.9.1").engine is Engine.VLLM
    with pytest.raises(CostError, match="unknown engine 'foo'; choose one of vllm"):
        parse_engine("foo")


def test_explain_says_robust_or_fragile_and_names_the_runner_up():
    from types import SimpleNamespace

    from terrazzo.plan.planning_graph import OpCandidate, PlanOp
    from terrazzo.plan.robustness import robustness

    graph = SimpleNamespace(cluster_devices=("b200", "gaudi3"))
    chosen = OpCandidate("b200", 1, 1, 32, 0.02, 10.0, 1, 10.0, spread=(0.9, 1.1))
    close = OpCandidate("gaudi3", 1, 1, 32, 0.02, 9.0, 1, 10.0, spread=(0.8, 1.3))  # 11 % dearer per visit
    far = OpCandidate("gaudi3", 1, 1, 32, 0.02, 5.0, 1, 10.0, spread=(0.8, 1.3))  # twice as dear
    op = PlanOp("llm.decode", "llm.decode", "llm", 1.0, (chosen, close))
    assert robustness(op, chosen, graph).startswith("fragile: at the edge of the error range gaudi3 tp1 pp1 b32")
    assert robustness(PlanOp("llm.decode", "llm.decode", "llm", 1.0, (chosen, far)), chosen, graph).startswith(
        "robust")
    unknown = OpCandidate("b200", 1, 1, 32, 0.02, 10.0, 1, 10.0)
    assert "unknown" in robustness(op, unknown, graph)
