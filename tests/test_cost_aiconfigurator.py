"""AIConfigurator's measured kernels, tabulated once and shipped: where they answer, and where they do not."""

from __future__ import annotations

from dataclasses import replace

import yaml

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.aiconfigurator import TABLE_DIR, table_for
from terrazzo.cost.aiconfigurator_tables import PACKAGE, PINNED
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import decode_step, prefill

CAT = load_catalog()


def test_tables_record_their_package_version_and_derivation():
    files = sorted(TABLE_DIR.glob("*.yaml"))
    assert {f.name for f in files} >= {"h100_sxm_trtllm_1.3.0rc20.yaml", "h200_sxm_trtllm_1.3.0rc20.yaml"}
    for f in files:
        d = yaml.safe_load(f.read_text())
        assert d["package_version"] == PINNED and PACKAGE in d["derived"]
        assert d["source"] == f"measured:aiconfigurator/{d['system']}/{d['backend']}/{d['version']}"


def test_measured_kernels_answer_inside_the_table_for_the_matching_engine():
    dep = deployment(CAT, "llama-3-70b", "h100", "fp8", 2, 1)  # NVIDIA's default engine: trtllm 1.0
    est = decode_step(dep, 64, 1500)
    assert est.source.startswith("measured:aiconfigurator/h100_sxm/trtllm/1.3.0rc20 + fitted:serving_fit.yaml#")
    assert est.static_s == dep.serving.step_overhead_s + 64 * dep.serving.sequence_overhead_s
    fitted_only = decode_step(replace(dep, kernels=None), 64, 1500)
    assert fitted_only.source.startswith("fitted:") and fitted_only.latency_s != est.latency_s
    assert prefill(dep, 2048, 4).source.startswith("measured:aiconfigurator/")


def test_no_table_for_another_engine_range_dtype_or_outside_the_grid():
    assert table_for("h100-sxm", EngineVersion(Engine.TRTLLM, "0.15.0")) is None  # older release: fitted
    assert table_for("h100-sxm", EngineVersion(Engine.VLLM, "0.10.2")) is None
    assert table_for("mi300x", EngineVersion(Engine.VLLM, "0.10.2")) is None
    dep = deployment(CAT, "llama-3-70b", "h100", "fp8", 2, 1)
    assert decode_step(dep, 64, 20000).source.startswith("fitted:")  # context beyond the grid
    assert decode_step(deployment(CAT, "llama-3-70b", "h100", "fp16", 2, 1), 64, 1500).source.startswith("fitted:")
