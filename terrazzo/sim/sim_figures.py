"""A run's figures: latency CDFs against the SLA, and utilisation per pool (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from terrazzo.sim.results import SATURATED, SimReport


def _cdf(ax: plt.Axes, values: np.ndarray, label: str) -> None:
    v = np.sort(values[np.isfinite(values)])
    if v.size:
        ax.step(v * 1e3, np.arange(1, v.size + 1) / v.size, where="post", label=label)


def latency_cdf(report: SimReport, path: Path) -> Path:
    """End-to-end latency, then TTFT and TBT per LLM node, each with its SLA limit."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    e2e, limit = report.records.requests["e2e_s"], report.deadline_s
    _cdf(axes[0], e2e, "end-to-end")
    if limit:
        axes[0].axvline(limit * 1e3, color="red", linestyle="--", label=f"deadline {limit:g} s")
    for s in report.llm:
        calls = report.records.calls.get(s.node, {})
        _cdf(axes[1], calls.get("ttft_s", np.zeros(0)), s.node)
        _cdf(axes[2], calls.get("tbt_s", np.zeros(0)), s.node)
        for ax, lim in ((axes[1], s.ttft_limit_s), (axes[2], s.tbt_limit_s)):
            if lim:
                ax.axvline(lim * 1e3, color="red", linestyle="--", linewidth=1)
    for ax, title in zip(axes, ("end-to-end latency", "time to first token", "time between tokens (per call)"),
                         strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if ax is axes[0] else "fraction of calls")
        ax.axhline(report.percentile / 100, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
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
    ax.set_xlabel("fraction")
    ax.set_title(f"{report.agent} at {report.rate_per_s:g} req/s: utilisation per pool", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
