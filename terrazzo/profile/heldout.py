"""Calibrated predictions against measurements the fit never saw.

`split` keeps a profile's grid points for fitting and sets the others aside; the fitted profile is
layered over the catalog like any other, and `evaluate` asks the cost functions the planner uses
for each set-aside point: the calibrated estimate (measured neighbours inside the grid, the fitted
roofline outside it) and, beside it, the fitted roofline alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.cost.calibration import PROFILE, ann_estimate, embed_estimate
from terrazzo.cost.candidates import deployment
from terrazzo.cost.cpu_ops import ann_search, encoder_batch
from terrazzo.cost.llm import decode_roofline, decode_step, prefill, prefill_roofline
from terrazzo.profile.layer import define_device
from terrazzo.profile.profile_command import fit_links, fit_ops
from terrazzo.profile.profile_file import (
    AnnPoint,
    DecodePoint,
    EmbedPoint,
    Points,
    PrefillPoint,
    Profile,
    write_profile,
)

Point = PrefillPoint | DecodePoint | EmbedPoint | AnnPoint
GROUPS = {"prefill": "prefill", "decode": "decode", "embed": "embed", "ann": "ann_search"}


@dataclass(frozen=True)
class Row:
    op: str
    point: str
    measured_s: float
    spread: float
    calibrated_s: float
    source: str
    fitted_s: float

    @property
    def inside(self) -> bool:
        """Whether the calibrated estimate came from measured neighbours (inside the fitted grid)."""
        return self.source.startswith(PROFILE)

    @property
    def error_pct(self) -> float:
        return (self.calibrated_s - self.measured_s) / self.measured_s * 100

    @property
    def fitted_error_pct(self) -> float:
        return (self.fitted_s - self.measured_s) / self.measured_s * 100


def split(prof: Profile, held_out: Callable[[str, Point], bool], catalog: Catalog | None = None
          ) -> tuple[Profile, dict[str, list[Point]]]:
    """The profile refitted on the points `held_out` rejects, and the points it set aside, per group."""
    keep, aside = {}, {}
    for group in GROUPS:
        pts = getattr(prof.points, group)
        keep[group] = [p for p in pts if not held_out(group, p)]
        aside[group] = [p for p in pts if held_out(group, p)]
    points = Points(**keep, transfer=prof.points.transfer)
    fitting = prof.model_copy(update={"points": points})
    cat = catalog or load_catalog()
    device = (define_device(cat, prof.device, fit_links(points), "held-out split") if prof.device.defines
              else cat.device(prof.device.name))
    cat.devices[device.name] = device
    refit = fitting.model_copy(update={"fit": prof.fit.model_copy(update={"ops": fit_ops(fitting, cat, device)})})
    return refit, aside


def evaluate(fitted: Profile, aside: dict[str, list[Point]], workdir: Path) -> list[Row]:
    """Layer `fitted` over the shipped catalog and predict every set-aside point with the cost functions."""
    path = workdir / "fitted-profile.yaml"
    write_profile(fitted, path)
    cat = load_catalog(profiles=[path])
    cal = cat.profiles[-1]
    dev = cat.device(cal.device)
    rows = []
    for group, pts in aside.items():
        for p in pts:
            if isinstance(p, PrefillPoint):
                dep = deployment(cat, cal.llm_model or "", dev.name, cal.llm_dtype or "fp32", 1, 1)
                est, alone, label = prefill(dep, p.isl, p.batch), prefill_roofline(dep, p.isl, p.batch), f"isl {p.isl}"
            elif isinstance(p, DecodePoint):
                dep = deployment(cat, cal.llm_model or "", dev.name, cal.llm_dtype or "fp32", 1, 1)
                est, alone = decode_step(dep, p.batch, p.context), decode_roofline(dep, p.batch, p.context)
                label = f"batch {p.batch}, context {p.context}"
            elif isinstance(p, EmbedPoint):
                model, dtype = cat.model(cal.embed_model or ""), cal.embed_dtype or "fp32"
                est = embed_estimate(cat, dev, model, p.tokens_per_text, dtype, p.texts)
                alone = encoder_batch(model, dev, cat.efficiency_for(dev.name, "embed"), p.texts, p.tokens_per_text,
                                      dtype)
                label = f"{p.texts} text(s) of {p.tokens_per_text} tokens"
            else:
                est = ann_estimate(cat, dev, p.vectors, p.dimension, p.k, p.index)
                alone = ann_search(dev, cat.efficiency_for(dev.name, "ann_search"), p.vectors, p.dimension, p.k,
                                   p.index)
                label = f"{p.vectors:,} vectors, k {p.k}"
            rows.append(Row(GROUPS[group], label, p.timing.median_s, p.timing.spread, est.latency_s, est.source,
                            alone.latency_s))
    return rows


def mape(rows: list[Row], op: str, inside: bool = True, fitted_only: bool = False) -> tuple[int, float]:
    """Points and mean absolute % error of one op kind's rows, inside or outside the fitted grid."""
    errs = [abs(r.fitted_error_pct if fitted_only else r.error_pct) for r in rows if r.op == op and r.inside == inside]
    return len(errs), float(np.mean(errs)) if errs else float("nan")
