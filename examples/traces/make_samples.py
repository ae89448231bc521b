"""Write small synthetic traces in the Azure LLM inference and BurstGPT formats (no download needed).

    .venv/bin/python examples/traces/make_samples.py

Five minutes of bursty traffic at about 5 requests/s (gamma inter-arrivals with cv 2, the rate swinging
±50 % over the five minutes), prompt and answer lengths lognormal around the voice agent's (600 and
250 tokens). The files follow the real ones' columns, so the loaders that read these read the real
traces too: https://github.com/Azure/AzurePublicDataset (AzureLLMInferenceTrace_*.csv) and
https://github.com/HPMLL/BurstGPT (BurstGPT_*.csv, with a few failed rows: 0 response tokens).
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SPAN_S, RATE_PER_S, CV, SEED = 300.0, 5.0, 2.0, 20251123


def arrivals(rng: np.random.Generator) -> np.ndarray:
    """Gamma renewal process with cv 2, time-warped so the rate follows 1 + 0.5·sin over the span."""
    shape = 1 / CV**2
    n = int(RATE_PER_S * SPAN_S * 1.5)
    unit = np.cumsum(rng.gamma(shape, 1 / shape, n))  # a rate-1 process
    grid = np.linspace(0, SPAN_S, 3001)
    cum = RATE_PER_S * (grid + 0.5 * SPAN_S / (2 * math.pi) * (1 - np.cos(2 * math.pi * grid / SPAN_S)))
    t = np.interp(unit, cum, grid, right=np.inf)
    return t[np.isfinite(t)]


def lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    sigma2 = math.log1p(cv * cv)
    return np.maximum(1, np.rint(rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n))).astype(int)


def main() -> None:
    rng = np.random.default_rng(SEED)
    t = arrivals(rng)
    isl, osl = lognormal(rng, 600, 0.5, t.size), lognormal(rng, 250, 0.6, t.size)
    start = datetime(2023, 11, 16, 18, 15, 46)
    with (HERE / "azure-sample.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for ti, i, o in zip(t, isl, osl, strict=True):
            stamp = start + timedelta(microseconds=round(ti * 1e6))
            w.writerow([stamp.strftime("%Y-%m-%d %H:%M:%S.%f") + "0", i, o])  # 100 ns ticks, as Azure writes
    failed = rng.random(t.size) < 0.01
    models = np.where(rng.random(t.size) < 0.8, "ChatGPT", "GPT-4")
    logs = np.where(rng.random(t.size) < 0.7, "Conversation log", "API log")
    with (HERE / "burstgpt-sample.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"])
        for ti, m, i, o, bad, log in zip(t, models, isl, osl, failed, logs, strict=True):
            out = 0 if bad else o
            w.writerow([f"{ti:.3f}", m, i, out, i + out, log])
    print(f"wrote {t.size} requests over {t[-1]:.0f} s to azure-sample.csv and burstgpt-sample.csv "
          f"({int(failed.sum())} failed rows in the BurstGPT file)")


if __name__ == "__main__":
    main()
