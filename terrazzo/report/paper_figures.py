"""Heat maps of TCO benefit over H100::H100 for every prefill::decode pair (the paper's Figures 8 and 9)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from terrazzo.plan.planner import Plan
from terrazzo.plan.reproduce import PairResult, benefits

SHORT = {"a100-80gb-sxm": "A100", "h100-sxm": "H100", "gaudi3": "Gaudi3", "mi300x": "MI300X", "b200": "B200",
         "a40": "A40"}


def _infeasible_label(reason: str) -> str:
    """A cell-sized name for the limit an infeasible pair misses."""
    if "TTFT" in reason:
        return "misses\nTTFT"
    if "TBT" in reason:
        return "misses\nTBT"
    return "does\nnot fit" if "fit" in reason else "infeasible"


def benefit_heatmaps(results: list[PairResult], isl: int, osl: int, path: Path) -> Path:
    """One panel per (model, dtype, mode) at this ISL/OSL; rows prefill device, columns decode device.

    All panels (and the other ISL/OSL figure) share one colour scale, a diverging map centred on 1× (the
    H100::H100 reference), and one colour bar; infeasible pairs are hatched grey and say which limit they
    miss; each panel's best pair is outlined."""
    configs = list(dict.fromkeys(r.config for r in results if (r.config.isl, r.config.osl) == (isl, osl)))
    panels = [([r for r in results if r.config == c], c) for c in configs]
    every = dict.fromkeys(r.config for r in results)  # one scale for every figure of the reproduction
    top = max((v for c in every for v in benefits([r for r in results if r.config == c]).values()), default=2.0)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(2.0, top))
    cmap = plt.get_cmap("RdYlGn")
    cols = 2
    rows = (len(configs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.2 * rows + 0.8), squeeze=False)
    image = None
    for ax, (rows_of, config) in zip(axes.flat, panels, strict=False):
        ben = benefits(rows_of)
        reason = {r.pair: r.reason for r in rows_of}
        devices = list(dict.fromkeys(r.prefill_device for r in rows_of))
        grid = np.array([[ben[f"{p}::{d}"] for d in devices] for p in devices])
        image = ax.imshow(np.ma.masked_less_equal(grid, 0.0), cmap=cmap, norm=norm)
        labels = [SHORT.get(d, d) for d in devices]
        ax.set_xticks(range(len(devices)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(devices)), labels)
        ax.set_xlabel("decode device")
        ax.set_ylabel("prefill device")
        ax.set_title(f"{config.model} {config.dtype.upper()} {config.mode}", fontsize=10)
        best = np.unravel_index(np.argmax(grid), grid.shape)
        for (i, j), v in np.ndenumerate(grid):
            if v > 0:
                shade = cmap(norm(v))
                dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", fontweight="bold" if (i, j) == best else "normal")
                continue
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.88", edgecolor="0.7", hatch="//",
                                   linewidth=0))
            ax.text(j, i, _infeasible_label(reason[f"{devices[i]}::{devices[j]}"]), ha="center", va="center",
                    fontsize=7, color="0.1", linespacing=0.9,
                    bbox={"facecolor": "0.88", "edgecolor": "none", "pad": 1.0})
        if grid[best] > 0:
            ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="black",
                                   linewidth=1.6))
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    fig.suptitle(f"TCO benefit over H100::H100 (prefill::decode), ISL/OSL {isl}/{osl}; "
                 "paper price profile, 4 y at 8 %, full TDP, $0.40/kWh", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.98))
    if image is not None:
        bar_ax = fig.add_axes((0.2, 0.02, 0.6, 0.012))
        bar = fig.colorbar(image, cax=bar_ax, orientation="horizontal")
        bar.set_label("TCO benefit over H100::H100, × (above 1: cheaper per request; outlined: best pair; "
                      "hatched: infeasible, with the limit it misses)", fontsize=8)
        bar.ax.tick_params(labelsize=8)
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
    for b in plan.baselines:
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
