"""Trace loaders: the Azure LLM inference traces (2023 Splitwise, 2024 DynamoLLM) and BurstGPT.

Azure:    TIMESTAMP,ContextTokens,GeneratedTokens     TIMESTAMP is wall-clock, e.g. 2023-11-16 18:15:46.6805900
          https://github.com/Azure/AzurePublicDataset (AzureLLMInferenceDataset2023.md / 2024.md)
BurstGPT: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
          Timestamp is seconds from the trace's start; newer releases add Session ID and Elapsed time.
          Rows with 0 response tokens are failed requests and are dropped. https://github.com/HPMLL/BurstGPT
simple:   arrival_s,input_tokens,output_tokens

The format is read from the header row. Times are shifted so the first request arrives at 0 s.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from terrazzo.errors import SimError

AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")
SIMPLE = ("arrival_s", "input_tokens", "output_tokens")
FORMATS = {"azure": AZURE, "burstgpt": BURSTGPT, "simple": SIMPLE}


@dataclass(frozen=True)
class Trace:
    name: str
    format: str
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    @property
    def rate_per_s(self) -> float:
        """Mean rate over the span (n − 1 gaps)."""
        return (len(self) - 1) / self.span_s if self.span_s > 0 else 0.0

    def scaled_to(self, rate_per_s: float) -> Trace:
        """The same burst pattern played faster or slower so its mean rate is `rate_per_s`."""
        if rate_per_s <= 0:
            raise SimError(f"a trace's target rate must be positive, got {rate_per_s:g}")
        if self.rate_per_s <= 0:
            raise SimError(f"trace {self.name} has fewer than two distinct arrival times; it cannot be rescaled")
        return replace(self, arrival_s=self.arrival_s * (self.rate_per_s / rate_per_s))


def detect_format(header: list[str]) -> str:
    cols = {h.strip() for h in header}
    for name, need in FORMATS.items():
        if set(need) <= cols:
            return name
    raise SimError(f"unrecognised trace header {', '.join(header)}; expected Azure ({', '.join(AZURE)}), "
                   f"BurstGPT ({', '.join(BURSTGPT)}) or simple ({', '.join(SIMPLE)}) columns")


def load_trace(path: str | Path, fmt: str | None = None) -> Trace:
    """Read a trace file in any of the three formats (detected from the header unless `fmt` is given)."""
    p = Path(path)
    if not p.is_file():
        raise SimError(f"trace file {p} not found; pass a path to an Azure or BurstGPT CSV "
                       f"(samples: examples/traces/)")
    with p.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            raise SimError(f"trace file {p} is empty")
        header = [h.strip() for h in header]
        fmt = fmt or detect_format(header)
        if fmt not in FORMATS:
            raise SimError(f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
        missing = [c for c in FORMATS[fmt] if c not in header]
        if missing:
            raise SimError(f"{p}: a {fmt} trace needs columns {', '.join(missing)}")
        idx = [header.index(c) for c in FORMATS[fmt]]
        cols: list[list[str]] = [[], [], []]
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                for k, i in enumerate(idx):
                    cols[k].append(row[i].strip())
            except IndexError:
                raise SimError(f"{p}:{line}: expected {len(header)} columns, got {len(row)}") from None
    if not cols[0]:
        raise SimError(f"trace file {p} has a header but no requests")
    try:
        times = _azure_seconds(cols[0]) if fmt == "azure" else np.asarray(cols[0], dtype=float)
        isl = np.asarray(cols[1], dtype=float)
        osl = np.asarray(cols[2], dtype=float)
    except ValueError as exc:
        raise SimError(f"{p}: a value does not parse as a number or time ({exc})") from None
    keep = osl > 0 if fmt == "burstgpt" else np.ones(len(osl), dtype=bool)
    order = np.argsort(times[keep], kind="stable")
    times, isl, osl = times[keep][order], isl[keep][order], osl[keep][order]
    if len(times) == 0:
        raise SimError(f"trace file {p} has no successful requests")
    return Trace(p.name, fmt, times - times[0], np.maximum(isl, 1).astype(np.int64),
                 np.maximum(osl, 1).astype(np.int64), int((~keep).sum()))


def _azure_seconds(stamps: list[str]) -> np.ndarray:
    """'2023-11-16 18:15:46.6805900' → seconds since the epoch (numpy parses to the nanosecond)."""
    iso = np.asarray([s.replace(" ", "T", 1) for s in stamps], dtype="datetime64[ns]")
    return (iso - iso.min()).astype(np.int64) / 1e9
