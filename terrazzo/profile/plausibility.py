"""Warnings on a profile's fits that should not be trusted as they stand.

An efficiency η is the share of a measured peak an op reaches, so a binding η above 1 means the op ran
faster than the peak allows: the peak probe (fp32 matmul, one large copy) under-measures what this op's
kernels reach, or its FLOP/byte count is off for the shape. A large fit error means the roofline does
not describe the points. A wide p10–p90 spread means the machine was busy while measuring. Each is
still usable as an interpolation of the measured points; the warning says what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from terrazzo.profile.profile_file import Fit, Profile

MAX_ETA = 1.0
MAX_FIT_ERROR_PCT = 15.0
MAX_SPREAD_PCT = 50.0


def fit_warnings(fit: Fit, spread_pct: Mapping[str, float] | None = None) -> list[str]:
    """One line per implausible fit: η above 1 on a factor the points determine, a fit error above
    MAX_FIT_ERROR_PCT, or a median p10–p90 spread above MAX_SPREAD_PCT."""
    out: list[str] = []
    for op, f in fit.ops.items():
        for factor in ("compute", "memory"):
            eta = getattr(f, factor)
            if factor in f.fitted and eta > MAX_ETA:
                out.append(f"{op}: η {factor} {eta:.3g} is above 1 (faster than this machine's measured peak), so "
                           f"it is not a physical efficiency; estimates for {op} stay close to the measured points "
                           "but extrapolate poorly. Re-run without --quick on an idle machine")
        if f.mape_pct > MAX_FIT_ERROR_PCT:
            out.append(f"{op}: fit error {f.mape_pct:.1f} % over {f.points} points (above {MAX_FIT_ERROR_PCT:g} %): "
                       "the roofline does not describe these measurements well; raise --repeats on an idle machine")
    for link, lf in fit.links.items():
        if lf.mape_pct > MAX_FIT_ERROR_PCT:
            out.append(f"transfer {link}: fit error {lf.mape_pct:.1f} % over {lf.points} points (above "
                       f"{MAX_FIT_ERROR_PCT:g} %): the α–β line misses these transfers; raise --repeats on an idle "
                       "machine")
    for kind, spread in (spread_pct or {}).items():
        if spread > MAX_SPREAD_PCT:
            out.append(f"{kind}: repeats vary by {spread:.0f} % (median p10–p90 spread): the machine was busy while "
                       "measuring; re-run on an idle machine or raise --repeats")
    return out


def profile_warnings(prof: Profile) -> list[str]:
    """`fit_warnings` for a measured profile, with the spread of each op kind's points."""
    import numpy as np

    pts = prof.points
    groups: dict[str, Sequence[Any]] = {"prefill": pts.prefill, "decode": pts.decode, "embed": pts.embed,
                                        "ann_search": pts.ann}
    spread = {op: float(np.median([p.timing.spread for p in group])) * 100 for op, group in groups.items() if group}
    return fit_warnings(prof.fit, spread)
