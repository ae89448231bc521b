"""Heat maps of TCO benefit over H100::H100 for every prefill::decode pair (the paper's Figures 8 and 9)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from terrazzo.plan.planner import Plan
from terrazzo.plan.reproduce import PairResult, benefits

SHORT = {"a100-80gb-sxm": "A100", "h100-sxm": "H100", "gaudi3": "Gaudi3", "mi300x": "MI300X", "b200": "B200",
         "a40": "A40"}


def benefit_heatmaps(results: list[PairResult], isl: int, osl: int, path: Path) -> Path:
    """One panel per (model, dtype, mode) at this ISL/OSL; rows prefill device, columns decode device."""
    configs = list(dict.fromkeys(r.config for r in results if (r.config.isl, r.config.osl) == (isl, osl)))
    cols = 2
    rows = (len(configs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.2 * rows), squeeze=False)
    for ax, config in zip(axes.flat, configs, strict=False):
        rows_of = [r for r in results if r.config == config]
        ben = benefits(rows_of)
        devices = list(dict.fromkeys(r.prefill_device for r in rows_of))
        grid = np.array([[ben[f"{p}::{d}"] for d in devices] for p in devices])
        ax.imshow(np.where(grid > 0, grid, np.nan), cmap="viridis", vmin=0, vmax=max(2.5, float(grid.max())))
        labels = [SHORT.get(d, d) for d in devices]
        ax.set_xticks(range(len(devices)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(devices)), labels)
        ax.set_xlabel("decode device")
        ax.set_ylabel("prefill device")
        ax.set_title(f"{config.model} {config.dtype.upper()} {config.mode}", fontsize=10)
        best = np.unravel_index(np.argmax(grid), grid.shape)
        for (i, j), v in np.ndenumerate(grid):
            text = f"{v:.2f}" if v > 0 else "n/a"
            weight = "bold" if (i, j) == best else "normal"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v < 1.5 else "black",
                    fontweight=weight)
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    fig.suptitle(f"TCO benefit over H100::H100 (prefill::decode), ISL/OSL {isl}/{osl}; "
                 "paper price profile, 4 y at 8 %, full TDP, $0.40/kWh", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_figure(plan: Plan, path: Path) -> Path:
    """Stacked $/h per device type for the plan, beside each feasible baseline's total."""
    per_device: dict[str, float] = {}
    shares = plan.op_usd_h()  # sums to the headline (owned devices: power only)
    for p in plan.ops:
        per_device[p.candidate.device] = per_device.get(p.candidate.device, 0.0) + shares[p.name]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = 0.0
    for device, usd in sorted(per_device.items()):
        ax.bar("plan", usd, bottom=bottom, label=device)
        bottom += usd
    for b in plan.baselines:  # type: ignore[attr-defined]
        if b.feasible:
            ax.bar(b.name.replace(" (", "\n("), b.usd_h, color="0.7")
    ax.set_ylabel("TCO $/h")
    ax.set_title(f"{plan.agent}: plan vs baselines at {plan.rate_per_s:g} req/s")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
