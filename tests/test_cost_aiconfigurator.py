"""AIConfigurator's measured kernels, tabulated once and shipped: where they answer, and where they do not."""

from __future__ import annotations

import itertools
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


def test_a100_vllm_kernels_answer_for_fp16_and_bf16_and_not_for_another_engine():
    vllm = EngineVersion(Engine.VLLM, "0.14.0")
    for dtype in ("fp16", "bf16"):
        dep = deployment(CAT, "codellama-34b", "a100-80gb-sxm", dtype, 2, 1, engine=vllm)
        assert decode_step(dep, 32, 1024).source.startswith("measured:aiconfigurator/a100_sxm/vllm/0.14.0 + ")
    default = deployment(CAT, "codellama-34b", "a100-80gb-sxm", "fp16", 2, 1)  # NVIDIA's default: TensorRT-LLM
    assert table_for("a100-80gb-sxm", default.engine) is None
    assert decode_step(default, 32, 1024).source.startswith("fitted:")
    assert decode_step(deployment(CAT, "codellama-34b", "a100-80gb-sxm", "fp8", 2, 1, engine=vllm), 32,
                       1024).source.startswith("fitted:")  # no fp8 kernels on an A100


def test_a_chunk_behind_earlier_tokens_is_priced_by_its_gemms_and_its_causal_pairs():
    """cost.llm prices chunks of c tokens behind p earlier ones as prefill(dep, x, n) with n = c / x < 1 and
    x = (c² + 2cp) / c (the sum of squares service_times aggregates); the tables answer that too."""
    dep = deployment(CAT, "codellama-34b", "a100-80gb-sxm", "fp16", 2, 1, engine=EngineVersion(Engine.VLLM, "0.14.0"))
    c, p = 512, 1024
    x = (c * c + 2 * c * p) / c
    chunk = prefill(dep, x, c / x)  # type: ignore[arg-type]
    alone, whole = prefill(dep, c, 1), prefill(dep, c + p, 1)
    assert chunk.source.startswith("measured:aiconfigurator/")
    assert alone.latency_s < chunk.latency_s < whole.latency_s  # more attention than alone, fewer GEMMs than all
    same = prefill(dep, c, 1.0)  # type: ignore[arg-type]  # no prefix: the whole-prompt lookup
    assert same.latency_s == alone.latency_s


def test_decode_attention_past_the_measured_grid_grows_with_the_kv_it_reads():
    """AIConfigurator measured decode attention up to ≈ 256k–1M batch × context tokens; past that the
    tables extend it in proportion to the KV read instead of holding the last measurement (which priced
    batch 256 at 8k context as at 1k). Each doubling of context adds at least the measured step's
    attention growth: never flat."""
    dep = deployment(CAT, "llama-3-70b", "h100", "fp8", 2, 1)
    steps = [decode_step(dep, 256, c) for c in (1024, 2048, 4096, 8192)]
    assert all(s.source.startswith("measured:aiconfigurator/h100_sxm/") for s in steps)
    growth = [b.latency_s - a.latency_s for a, b in itertools.pairwise(steps)]
    assert all(g > 0 for g in growth)
    assert growth[2] >= 1.5 * growth[1]  # the KV read doubles with each doubling of context
