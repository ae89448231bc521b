"""Cost-model calibration on this machine: profile → fit → predictions at held-out points.

    .venv/bin/python bench/bench_profile.py [--repeats 21] [--warmup 3] [--threads 1] [--device cpu|cuda]
                                            [--model DIR]

One interleaved measurement run (terrazzo.profile.profile_command) covers a fitting grid and, between its
points, held-out points; the profile is refitted on the grid alone, layered over the catalog, and
the cost functions the planner uses predict every held-out point. Printed per point: the measured
median (with its p10–p90 spread), the calibrated prediction and its source, its error, and the
fitted roofline alone; then the mean absolute % error per op kind, inside the grid (where the
planner uses measured neighbours) and outside it (fitted roofline only: extrapolation).
Default LLM: a tiny random-weight Llama made on the fly (its timings say nothing about real models).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from terrazzo.profile.heldout import GROUPS, Row, evaluate, mape, split
from terrazzo.profile.profile_command import Options, profile_machine, summary

FIT_ISL = (16, 32, 64, 128, 256, 512, 1024, 2048)
HELD_ISL = (24, 48, 96, 192, 384, 768, 1536, 3072)  # 3072: outside the grid
FIT_BATCH, FIT_CONTEXT = (1, 2, 4, 8, 16, 32), (32, 128, 512, 2048)
HELD_DECODE = (*((b, c) for b in (3, 6, 12, 24) for c in (64, 256, 1024)), (48, 256), (8, 4096))
FIT_TOKENS, HELD_TOKENS = (8, 16, 32, 64, 128, 256), (12, 24, 48, 96, 192)
FIT_TEXTS, HELD_TEXTS = (1, 2, 4, 8, 16, 32), (3, 12)
FIT_VECTORS, FIT_K = (1_000, 4_000, 16_000, 64_000, 128_000), (1, 10, 100)
HELD_ANN = ((2_000, 10), (8_000, 10), (32_000, 10), (96_000, 10), (8_000, 3), (256_000, 10))


def held_out(group: str, p: object) -> bool:
    """True for the points the fit must not see."""
    if group == "prefill":
        return p.isl not in FIT_ISL  # type: ignore[attr-defined]
    if group == "decode":
        return p.batch not in FIT_BATCH or p.context not in FIT_CONTEXT  # type: ignore[attr-defined]
    if group == "embed":
        return (p.texts, p.tokens_per_text) not in (  # type: ignore[attr-defined]
            {(1, t) for t in FIT_TOKENS} | {(n, 32) for n in FIT_TEXTS})
    return p.vectors not in FIT_VECTORS or p.k not in FIT_K  # type: ignore[attr-defined]


def table(rows: list[Row]) -> str:
    out = ["| op | held-out point | measured ms (p10–p90 spread) | calibrated ms | error | fitted roofline ms | "
           "error | source of the calibrated estimate |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.op} | {r.point} | {r.measured_s * 1e3:.3f} (±{r.spread * 50:.0f} %) | "
                   f"{r.calibrated_s * 1e3:.3f} | {r.error_pct:+.1f} % | {r.fitted_s * 1e3:.3f} | "
                   f"{r.fitted_error_pct:+.1f} % | {r.source.split('#', 1)[-1] if r.inside else 'fitted roofline'} |")
    return "\n".join(out)


def mape_table(rows: list[Row]) -> str:
    out = ["| op | inside the grid: points | calibrated MAPE | fitted roofline alone | outside the grid: points | "
           "MAPE (fitted roofline) |", "|---|---|---|---|---|---|"]
    for op in GROUPS.values():
        n_in, m_in = mape(rows, op, inside=True)
        _, f_in = mape(rows, op, inside=True, fitted_only=True)
        n_out, m_out = mape(rows, op, inside=False)
        out.append(f"| {op} | {n_in} | {m_in:.1f} % | {f_in:.1f} % | {n_out} | "
                   + (f"{m_out:.1f} % |" if n_out else "- |"))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", type=Path, default=None, help="HF checkpoint dir (default: tiny random Llama)")
    args = parser.parse_args()
    opts = Options(
        device=args.device, threads=args.threads, repeats=args.repeats, warmup=args.warmup, model=args.model,
        ops=("prefill", "decode", "embed", "ann"), isl=tuple(sorted(FIT_ISL + HELD_ISL)),
        decode_batch=FIT_BATCH, decode_context=FIT_CONTEXT, embed_texts=FIT_TEXTS + HELD_TEXTS,
        embed_tokens=FIT_TOKENS + HELD_TOKENS, embed_batch_tokens=32, ann_vectors=FIT_VECTORS, ann_k=FIT_K,
        extra={"decode": HELD_DECODE, "ann": HELD_ANN}, kv_budget_gb=3.0,
        command="bench/bench_profile.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
    )
    start = time.perf_counter()
    prof = profile_machine(opts, say=print)
    measured_s = time.perf_counter() - start
    fitted, aside = split(prof, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        rows = evaluate(fitted, aside, Path(tmp))
    from rich.console import Console

    print()
    Console(width=140).print(summary(fitted))
    mach = prof.machine
    print(f"\nmachine: {mach.identity}, {mach.logical_cores} logical cores, torch {mach.torch}, {opts.threads} "
          f"thread(s); {opts.repeats} interleaved rounds after {opts.warmup} warm-up; took {measured_s:.0f} s")
    print(f"fitted on {sum(len(getattr(fitted.points, g)) for g in GROUPS)} grid points, "
          f"evaluated at {len(rows)} held-out points\n")
    print(table(rows))
    print()
    print(mape_table(rows))
    for note in prof.notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
