"""Writes bench/data/vidur_a100_codellama34b_tp2.json: the few figures of Vidur's own A100 profile that price
one CodeLlama-34B TP2 iteration, so that the Vidur check (bench/vidur_cost.py) runs on the inputs Vidur's
figures came from, pinned, and measures the scheduler rather than a cost model.

    .venv/bin/python bench/vidur_profile_extract.py --vidur DIR [--commit HASH] [--forest]

DIR is a checkout of github.com/microsoft/vidur (the figures here are from commit 7d47513). Read from it:
- data/profiling/compute/a100/codellama/CodeLlama-34b-Instruct-hf/mlp.csv, the rows with
  num_tensor_parallel_workers == 2: per layer, the median time of the four linear layers (attn_pre_proj,
  attn_post_proj, mlp_up_proj, mlp_down_proj) and of the element-wise kernels (input_layernorm,
  post_attention_layernorm, attn_rope, mlp_act, add), at every profiled token count up to 512 (a multiple
  of 8: Vidur rounds an iteration's tokens up to 8 and its predictor then all but looks the row up; a
  coarser grid would sit on the GEMMs' tile-friendly counts and read 2–4 % low) and every 128 beyond;
- data/profiling/network/a100_pairwise_nvlink/all_reduce.csv, the rows with num_workers == 2,
  devices_per_node == 2: the median over the rows whose size (bytes; Vidur reads size / n_embd / 2 as
  tokens) falls within a factor √2 of each power-of-two token count (the raw rows scatter 0.01–0.07 ms
  at small sizes, where Vidur's random forest averages them too).
The predictor and memory constants are Vidur's defaults for this scenario, with where each is set. Only
figures are taken: no code and no whole file of the checkout goes into this repository.

`--forest` also prints how far a random forest fitted to the same TP2 rows (Vidur's default predictor
kind, here 250 trees of depth 16, scikit-learn) predicts from the rows themselves at the token counts
that matter: whether Vidur's smoothing of the profile could move its step times.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).parent / "data" / "vidur_a100_codellama34b_tp2.json"
MLP = "data/profiling/compute/a100/codellama/CodeLlama-34b-Instruct-hf/mlp.csv"
ALL_REDUCE = "data/profiling/network/a100_pairwise_nvlink/all_reduce.csv"
LINEAR = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
N_EMBD = 8192


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    with path.open(newline="") as f:
        return [(line, row) for line, row in enumerate(csv.DictReader(f), start=2)]  # line 1 is the header


def per_layer(path: Path) -> dict[str, object]:
    by_tokens: dict[int, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in _rows(path):
        if row["num_tensor_parallel_workers"] == "2":
            by_tokens[int(row["num_tokens"])].append((line, row))
    grid = sorted(t for t in by_tokens if t <= 512 or t % 128 == 0)

    def med(t: int, ops: tuple[str, ...]) -> float:
        return round(statistics.median(sum(float(r[f"time_stats.{op}.median"] or 0) for op in ops)
                                       for _, r in by_tokens[t]), 4)

    return {"source": f"{MLP}, rows num_tensor_parallel_workers == 2 (n_head 64, n_kv_head 8, n_embd 8192, "
                      "n_expanded_embd 22016): per layer, Σ time_stats.<op>.median (ms) over the ops named; the "
                      "median of duplicate rows",
            "linear_ops": list(LINEAR), "elementwise_ops": list(ELEMENTWISE),
            "tokens": grid, "linear_ms": [med(t, LINEAR) for t in grid],
            "elementwise_ms": [med(t, ELEMENTWISE) for t in grid],
            "csv_lines": [[line for line, _ in by_tokens[t]] for t in grid]}


def all_reduce(path: Path) -> dict[str, object]:
    pts = [(float(r["size"]) / N_EMBD / 2, float(r["time_stats.all_reduce.median"])) for _, r in _rows(path)
           if r["num_workers"] == "2" and r["devices_per_node"] == "2" and r["collective"] == "all_reduce"]
    tokens, ms, counts = [], [], []
    for k in range(14):  # 1 … 8,192 tokens
        t = 2.0**k
        got = [v for x, v in pts if t / math.sqrt(2) <= x < t * math.sqrt(2)]
        if got:
            tokens.append(int(t))
            ms.append(round(statistics.median(got), 4))
            counts.append(len(got))
    return {"source": f"{ALL_REDUCE}, rows num_workers == 2, devices_per_node == 2, collective all_reduce: the "
                      "median of time_stats.all_reduce.median (ms) over the rows with size / (2·8192) tokens "
                      "within a factor √2 of each count",
            "tokens": tokens, "ms": ms, "rows": counts}


def forest_check(path: Path) -> None:
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor  # type: ignore[import-untyped]

    rows = [r for _, r in _rows(path) if r["num_tensor_parallel_workers"] == "2"]
    x = np.array([[float(r["num_tokens"])] for r in rows])
    y = np.array([sum(float(r[f"time_stats.{op}.median"] or 0) for op in LINEAR + ELEMENTWISE) for r in rows])
    at = (16, 32, 64, 256, 448, 480, 504, 512)
    own = {t: float(np.median(y[x[:, 0] == t])) for t in at}
    for split in (2, 5, 10):
        forest = RandomForestRegressor(n_estimators=250, max_depth=16, min_samples_split=split, random_state=0)
        pred = forest.fit(x, y).predict(np.array([[t] for t in at], dtype=float))
        print(f"min_samples_split {split}: forest / row at " + ", ".join(
            f"{t}: {p / own[t]:.3f}" for t, p in zip(at, pred, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidur", type=Path, required=True, help="a checkout of github.com/microsoft/vidur")
    parser.add_argument("--commit", default="7d47513363ec447a741ac5e47241580b47724fbf")
    parser.add_argument("--forest", action="store_true", help="also compare a random forest's fit with the rows")
    args = parser.parse_args()
    if args.forest:
        forest_check(args.vidur / MLP)
    repo = f"github.com/microsoft/vidur@{args.commit}"
    doc = {
        "source": f"profiled:{repo}",
        "derived": "bench/vidur_profile_extract.py (figures only; see its docstring for the rows)",
        "scenario": "CodeLlama-34B (codellama/CodeLlama-34b-Instruct-hf), fp16, one A100-80GB TP2 replica",
        "per_layer": per_layer(args.vidur / MLP),
        "all_reduce": all_reduce(args.vidur / ALL_REDUCE),
        "predictor": {
            "source": f"{repo} vidur/config/config.py (BaseExecutionTimePredictorConfig defaults), "
                      "vidur/entities/execution_time.py (an all-reduce after attention and after the MLP; "
                      "embedding and LM head not counted), vidur/entities/batch.py (tokens rounded up to 8), "
                      "vidur/execution_time_predictor/sklearn_execution_time_predictor.py (GQA batching "
                      "overheads, the mean decode context rounded up to the granularity)",
            "layers": 48, "all_reduces_per_layer": 2, "nccl_cpu_launch_overhead_ms": 0.02,
            "token_rounding": 8, "kv_cache_prediction_granularity": 64,
            "attention_decode_batching_overhead_fraction": 0.1,
            "attention_prefill_batching_overhead_fraction": 0.1, "skip_cpu_overhead_modeling": True},
        "memory": {
            "source": f"{repo} vidur/config/config.py (ReplicaConfig.memory_margin_fraction, "
                      "BaseReplicaSchedulerConfig block_size and watermark_blocks_fraction, max_tokens), "
                      "vidur/config/device_sku_config.py (A100 total_memory_gb), "
                      "vidur/scheduler/utils/memory_planner.py and vidur/utils/param_counter.py (slots of "
                      "max_tokens KV beside fp16 weights of the attention and MLP matrices), "
                      "vidur/scheduler/replica_scheduler/base_replica_scheduler.py (num_blocks = slots × "
                      "max_tokens / block_size)",
            "total_memory_gb": 80, "memory_margin_fraction": 0.1, "max_tokens": 4096, "block_size": 16,
            "watermark_blocks_fraction": 0.01},
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
