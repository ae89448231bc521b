"""Measure prefill and decode of terrazzo's built-in PyTorch engine on one GPU and compare with the cost model.

The engine is the one terrazzo/runtime/executors/llm_engine.py runs: a transformers Llama forward with a
DynamicCache, eager PyTorch (no CUDA graphs, no fused serving kernels). Weights are random (no weights can
be downloaded); only shapes matter for time. Shapes: the real Llama-3-8B, and an 8-layer slice of
Llama-3-70B (its per-layer shapes; the model is asked about the same slice). Every result line is labelled
`builtin-torch-eager` and goes to $OUT only: these points never enter measurements.yaml and never fit the
vLLM or TensorRT-LLM efficiencies.

    bench/gpu_calibration.sh            # on a GPU machine, ≤ 5 minutes, results under $OUT as they come
    bench/gpu_calibration.sh --tiny     # CPU, a tiny random checkpoint through LlmEngine itself (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

LABEL = "builtin-torch-eager"


def _spec(name: str, layers: int | None, catalog: Any) -> Any:
    """The catalog model, optionally cut to `layers` layers (parameters recounted from the shapes)."""
    m = catalog.model(name)
    if layers is None:
        return m
    per_layer = (2 * m.hidden * m.heads * m.head_dim + 2 * m.hidden * m.kv_heads * m.head_dim
                 + 3 * m.hidden * m.ffn)
    params = layers * per_layer + 2 * m.vocab * m.hidden
    return m.model_copy(update={"name": f"{name}-{layers}l", "layers": layers,
                                "params_b": m.params_b.model_copy(update={"value": params / 1e9})})


def predicted(catalog: Any, spec: Any, device: str, dtype: str, phase: str, batch: int, length: int) -> dict[str, Any]:
    from dataclasses import replace

    from terrazzo.catalog.engines import Engine, EngineVersion
    from terrazzo.cost.candidates import deployment
    from terrazzo.cost.llm import decode_step, prefill

    dep = deployment(catalog, "llama-3-8b", device, dtype, 1, 1, engine=EngineVersion(Engine.BUILTIN, "eager"))
    dep = replace(dep, model=spec, kernels=None)
    est = prefill(dep, length, batch) if phase == "prefill" else decode_step(dep, batch, length)
    return {"predicted_s": est.latency_s, "source": est.source, "spread": list(est.spread)}


def _timed(fn: Any, sync: Any, repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model: Any, torch: Any, device: str, phase: str, batch: int, length: int, vocab: int,
            repeats: int) -> float:
    """Median seconds of one prefill of `batch` prompts of `length` tokens, or of one decode step of `batch`
    sequences whose cache holds `length` tokens."""
    from transformers import DynamicCache

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids = torch.randint(0, vocab, (batch, length), device=device)
    with torch.inference_mode():
        if phase == "prefill":
            return _timed(lambda: model(input_ids=ids, use_cache=True), sync, repeats)
        cache = DynamicCache()
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        step = torch.randint(0, vocab, (batch, 1), device=device)

        def one() -> None:
            model(input_ids=step, past_key_values=cache, use_cache=True)
            cache.crop(-1)  # drop the new token again: the context stays `length` across repeats

        return _timed(one, sync, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU and a tiny checkpoint (the test suite runs this)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_calibration_out")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new measurements after this")
    args = parser.parse_args(argv)
    start = time.monotonic()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from terrazzo.catalog.catalog_loader import load_catalog
    from terrazzo.models.tiny import make_tiny_checkpoint
    from terrazzo.runtime.executors.llm_engine import LlmEngine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = (out / "gpu_calibration.jsonl").open("w")
    catalog = load_catalog()
    results: list[dict[str, Any]] = []

    if args.tiny:
        ckpt = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
        engine = LlmEngine(ckpt, threads=1)  # the built-in engine itself, on its own CPU path
        gen = engine.generate(engine.encode("calibration prompt " * 8), max_new_tokens=4)
        cfg = engine.model.config
        spec = catalog.model("llama-3-8b").model_copy(update={
            "name": "tiny", "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads, "ffn": cfg.intermediate_size,
            "vocab": cfg.vocab_size, "params_b": catalog.model("llama-3-8b").params_b.model_copy(
                update={"value": sum(p.numel() for p in engine.model.parameters()) / 1e9})})
        shapes = [("tiny", engine.model, spec, "cpu", "xeon-8592", "fp32")]
        grid = {"prefill": [(1, 16), (2, 32)], "decode": [(1, 16), (4, 32)]}
        repeats = 2
        (out / "engine_check.json").write_text(json.dumps(
            {"engine": LABEL, "generated_tokens": len(gen.token_ids), "prefill_s": gen.prefill_s,
             "decode_s": gen.decode_s}))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny on a CPU machine")
        name = torch.cuda.get_device_name(0)
        device_name = "h200-sxm" if "H200" in name else "h100-sxm" if "H100" in name else "a100-80gb-sxm"
        shapes = []
        for model_name, layers in (("llama-3-8b", None), ("llama-3-70b", 8)):
            spec = _spec(model_name, layers, catalog)
            cfg = LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn,
                              num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                              num_key_value_heads=spec.kv_heads, max_position_embeddings=16384)
            with torch.device("cuda"):
                model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()  # random weights: only shapes matter
            shapes.append((spec.name, model, spec, "cuda", device_name, "bf16"))
        grid = {"prefill": [(1, 128), (1, 512), (1, 2048), (4, 512), (8, 2048), (16, 1024)],
                "decode": [(1, 512), (1, 4096), (8, 1024), (32, 1024), (32, 4096), (128, 1024), (128, 2048),
                           (256, 1024)]}
        repeats = 5

    for model_label, model, spec, device, catalog_device, dtype in shapes:
        for phase, points in grid.items():
            for batch, length in points:
                if time.monotonic() - start > args.budget_s:
                    break
                seconds = measure(model, torch, device, phase, batch, length, spec.vocab, repeats)
                row = {"engine": LABEL, "model": model_label, "device": catalog_device, "dtype": dtype,
                       "phase": phase, "batch": batch, "length": length, "measured_s": seconds,
                       **predicted(catalog, spec, catalog_device, dtype, phase, batch, length)}
                row["measured_over_predicted"] = seconds / row["predicted_s"]
                results.append(row)
                lines.write(json.dumps(row) + "\n")
                lines.flush()  # written as they come: a run cut short keeps what it measured
                print(f"{model_label:18s} {phase:7s} b={batch:<4d} len={length:<5d} measured {seconds * 1e3:9.2f} ms "
                      f"model {row['predicted_s'] * 1e3:9.2f} ms  ratio {row['measured_over_predicted']:.2f}")
        del model
    ratios = [r["measured_over_predicted"] for r in results]
    summary = {"engine": LABEL, "points": len(results), "median_measured_over_predicted": statistics.median(ratios),
               "elapsed_s": time.monotonic() - start,
               "note": "builtin-torch-eager points are reported only; they never fit vLLM/TRT-LLM efficiencies"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
