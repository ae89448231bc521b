"""A run's figures: latency CDFs against the SLA, and utilisation per pool (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from terrazzo.sim.results import SATURATED, SimReport


def _unit(values: list[np.ndarray], limits: list[float | None]) -> tuple[float, str]:
    """Seconds when the panel's values or limits reach 1 s, else milliseconds: (scale from seconds, label)."""
    top = max([float(np.nanmax(v[np.isfinite(v)])) for v in values if np.isfinite(v).any()]
              + [lim for lim in limits if lim], default=0.0)
    return (1.0, "s") if top >= 1.0 else (1e3, "ms")


def _cdf(ax: plt.Axes, values: np.ndarray, label: str, scale: float) -> None:
    v = np.sort(values[np.isfinite(values)])
    if v.size:
        ax.step(v * scale, np.arange(1, v.size + 1) / v.size, where="post", label=label)


def latency_cdf(report: SimReport, path: Path) -> Path:
    """End-to-end latency, then TTFT and TBT per LLM node, each with its SLA limit as a labelled line and
    the SLA's percentile as a labelled level; axes in seconds (milliseconds for sub-second panels)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    calls = {s.node: report.records.calls.get(s.node, {}) for s in report.llm}
    e2e, deadline = report.records.requests["e2e_s"], report.deadline_s
    panels = [
        ("end-to-end latency", "fraction of requests", [("end-to-end", e2e)], [("deadline", deadline)]),
        ("time to first token", "fraction of calls",
         [(s.node, calls[s.node].get("ttft_s", np.zeros(0))) for s in report.llm],
         [(f"{s.node} TTFT limit", s.ttft_limit_s) for s in report.llm]),
        ("time between tokens (per call)", "fraction of calls",
         [(s.node, calls[s.node].get("tbt_s", np.zeros(0))) for s in report.llm],
         [(f"{s.node} TBT limit", s.tbt_limit_s) for s in report.llm]),
    ]
    for ax, (title, ylabel, series, limits) in zip(axes, panels, strict=True):
        scale, unit = _unit([v for _, v in series], [lim for _, lim in limits])
        for label, values in series:
            _cdf(ax, values, label, scale)
        shown: list[tuple[str, float]] = [(lb, li) for lb, li in limits if li]
        for k, (label, lim) in enumerate(shown):
            ax.axvline(lim * scale, color="red", linestyle=("--", ":", "-.")[k % 3], linewidth=1.2,
                       label=f"{label} {lim * scale:g} {unit}")
        ax.axhline(report.percentile / 100, color="grey", linewidth=0.8, label=f"p{report.percentile:g}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"latency ({'seconds' if unit == 's' else 'milliseconds'})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.3g}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{report.agent}: {report.rate_per_s:g} req/s {report.arrival}, {report.requests} requests, "
                 f"attainment {report.attainment:.1%}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def utilisation(report: SimReport, path: Path) -> Path:
    """Per pool: share of capacity in use (batch slots for LLM pools) and share of time busy; per link group:
    mean and peak utilisation."""
    rows = [(f"{p.op}\n{p.device}", p.utilisation, p.busy) for p in report.pools]
    rows += [(f"link {lk.name}", lk.utilisation_mean, lk.utilisation_max) for lk in report.links]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r[1] for r in rows], height=0.4, label="utilisation (links: mean)")
    ax.barh(y + 0.2, [r[2] for r in rows], height=0.4, label="busy (links: busiest)", alpha=0.6)
    ax.axvline(SATURATED, color="red", linestyle="--", linewidth=1, label=f"saturated ({SATURATED:.0%})")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of capacity in use (LLM pools: batch slots) and of time busy")
    ax.set_title(f"{report.agent} at {report.rate_per_s:g} req/s: utilisation per pool", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
