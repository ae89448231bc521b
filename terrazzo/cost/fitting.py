"""Fit the serving model's efficiencies on the published measurements, per vendor and per (vendor, engine,
version range, architecture) group, with physical bounds and priors.

Parameters live in log space (efficiencies, overheads, α) so that every bound is a box: η ∈ [0.05, 1].
Each vendor has one set (compute, attention, weights, kv, step overhead, tp loss, all-reduce α); each
group has its own compute, weights, kv, step overhead and tp loss, pulled towards its vendor's (ridge in
log space, σ = group_sigma_log). A group with no training points therefore equals its vendor, which is
what leave-one-source-out cross-validation measures for a stack no other source covers. No parameter
belongs to a point: the fit has 7 per vendor and 5 per group against 220 points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from scipy.optimize import least_squares

from terrazzo.cost.serving_model import ServingParams, priors, step_terms
from terrazzo.cost.validation import PointWork

VENDOR_PARAMS = ("compute", "attention", "weights", "kv_ratio", "step_overhead_s", "sequence_overhead_s", "tp_loss",
                 "allreduce_alpha_s")
GROUP_PARAMS = ("compute", "weights", "kv_ratio", "step_overhead_s", "sequence_overhead_s", "tp_loss")
LINEAR = {"tp_loss"}  # fitted as is; the rest in natural log
# The KV-cache read is fitted as a fraction of the weight stream's bandwidth (kv_ratio ≤ 1): paged
# attention never streams faster than one large contiguous read.
DATA_SIGMA_LOG = 0.1  # the scale a log-residual of a point is weighed on against the priors
# prior widths that differ from sigma_log (tp_loss is linear, the rest natural log)
SIGMA = {"tp_loss": 0.05, "step_overhead_s": 0.6, "sequence_overhead_s": 1.0, "allreduce_alpha_s": 0.7}


@dataclass(frozen=True)
class Fit:
    vendors: dict[str, dict[str, float]]
    groups: dict[str, dict[str, float]]

    def params(self, group: str) -> ServingParams:
        """A group's efficiencies; an unseen group gets its vendor's (MoE with the architecture prior)."""
        vendor, arch = group.split("/")[0], group.rsplit("/", 1)[1]
        v = self.vendors[vendor]
        g = self.groups.get(group) or _vendor_as_group(v, arch)
        net = float(priors()["vendors"][vendor]["network"]["value"])
        return ServingParams(group, g["compute"], v["attention"], g["weights"], g["weights"] * g["kv_ratio"],
                             g["step_overhead_s"],
                             g["tp_loss"], v["allreduce_alpha_s"], net, g["sequence_overhead_s"])


def _arch_mult(arch: str) -> dict[str, float]:
    entry = priors()["architecture_prior"].get(arch)
    if entry is None:
        return {}
    return {k: float(v) for k, v in entry.items() if k != "source"}


def _vendor_as_group(v: dict[str, float], arch: str) -> dict[str, float]:
    mult = _arch_mult(arch)
    return {k: v[k] * mult.get(k, 1.0) if k not in LINEAR else v[k] for k in GROUP_PARAMS}


def _bounds(name: str) -> tuple[float, float]:
    b = priors()["bounds"]
    lo, hi = b.get(name, b["efficiency"])
    return (lo, hi) if name in LINEAR else (float(np.log(lo)), float(np.log(hi)))


def _enc(name: str, x: float) -> float:
    return x if name in LINEAR else float(np.log(x))


def _dec(name: str, x: float) -> float:
    return x if name in LINEAR else float(np.exp(x))


class _Problem:
    """The points as arrays, and the parameter vector's layout."""

    def __init__(self, works: Sequence[PointWork]) -> None:
        self.works = list(works)
        self.vendors: list[str] = sorted({w.point.vendor for w in works})
        self.groups = sorted({w.group for w in works})
        self.layout: list[tuple[str, str]] = [(f"v:{v}", p) for v in self.vendors for p in VENDOR_PARAMS]
        self.layout += [(f"g:{g}", p) for g in self.groups for p in GROUP_PARAMS]
        self.index = {k: i for i, k in enumerate(self.layout)}
        self.vendor_of = np.array([self.vendors.index(w.point.vendor) for w in works])
        self.group_of = np.array([self.groups.index(w.group) for w in works])
        col = lambda f: np.array([f(w) for w in works], dtype=float)  # noqa: E731
        self.dec = SimpleNamespace(**{k: col(lambda w, k=k: getattr(w.decode, k)) for k in _WORK})
        self.pre = SimpleNamespace(**{k: col(lambda w, k=k: getattr(w.prefill, k)) for k in _WORK})
        self.peaks = SimpleNamespace(**{k: col(lambda w, k=k: getattr(w.peaks, k)) for k in
                                        ("flops", "flops_16", "mem_bw", "link_bw")})
        self.net = np.array([priors()["vendors"][w.point.vendor]["network"]["value"] for w in works], dtype=float)
        self.batch, self.npre = col(lambda w: w.batch), col(lambda w: w.prefill_batch)
        self.osl, self.replicas = col(lambda w: w.point.osl), col(lambda w: w.point.replicas)
        self.metric = np.array([w.point.metric for w in works])
        self.measured = col(lambda w: w.point.measured.value)
        self._prepare()

    def x0(self) -> np.ndarray:
        x = np.zeros(len(self.layout))
        for (owner, p), i in self.index.items():
            vendor = owner[2:].split("/")[0]
            prior = float(priors()["vendors"][vendor][p]["value"])
            if owner.startswith("g:"):
                prior *= _arch_mult(owner.rsplit("/", 1)[1]).get(p, 1.0) if p not in LINEAR else 1.0
            lo, hi = _bounds(p)
            x[i] = min(max(_enc(p, prior), lo + 1e-9), hi - 1e-9)
        return x

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = zip(*(_bounds(p) for _, p in self.layout), strict=True)
        return np.array(lo), np.array(hi)

    def _prepare(self) -> None:
        """Index arrays: which entry of x each point uses per parameter, and the prior terms as
        (index, reference index or -1, centre, width) so residuals are one vectorised expression."""
        self.cols: dict[str, np.ndarray] = {}
        for p in GROUP_PARAMS:
            per_group = np.array([self.index[(f"g:{g}", p)] for g in self.groups])
            self.cols[p] = per_group[self.group_of]
        for p in ("attention", "allreduce_alpha_s"):
            per_vendor = np.array([self.index[(f"v:{v}", p)] for v in self.vendors])
            self.cols[p] = per_vendor[self.vendor_of]
        sig, gsig = float(priors()["sigma_log"]), float(priors()["group_sigma_log"])
        rows: list[tuple[int, int, float, float]] = []
        for v in self.vendors:
            for p in VENDOR_PARAMS:
                rows.append((self.index[(f"v:{v}", p)], -1, _enc(p, float(priors()["vendors"][v][p]["value"])),
                             SIGMA.get(p, sig)))
        for g in self.groups:
            gv, mult = g.split("/")[0], _arch_mult(g.rsplit("/", 1)[1])
            for p in GROUP_PARAMS:
                offset = 0.0 if p in LINEAR else float(np.log(mult.get(p, 1.0)))
                rows.append((self.index[(f"g:{g}", p)], self.index[(f"v:{gv}", p)], offset,
                             SIGMA["tp_loss"] if p in LINEAR else gsig))
        i, j, c, w = zip(*rows, strict=True)
        self.reg_i, self.reg_j = np.array(i), np.array(j)
        self.reg_c, self.reg_w = np.array(c), np.array(w)

    def _per_point(self, x: np.ndarray) -> SimpleNamespace:
        vals = {p: x[idx] if p in LINEAR else np.exp(x[idx]) for p, idx in self.cols.items()}
        return SimpleNamespace(**vals, kv=vals["weights"] * vals["kv_ratio"], network=self.net)

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = self._per_point(x)
        dec, pre = _seconds(self.dec, self.peaks, p), _seconds(self.pre, self.peaks, p)
        agg = self.osl * self.replicas / (pre / self.npre + self.osl * dec / self.batch)
        lat = pre + (self.osl - 1) * dec
        return np.where(self.metric == "aggregated_tokens_per_s", agg, np.where(self.metric == "prefill_s", pre, lat))

    def residuals(self, x: np.ndarray) -> np.ndarray:
        data = np.log(self.predict(x) / self.measured) / DATA_SIGMA_LOG
        ref = np.where(self.reg_j >= 0, x[np.maximum(self.reg_j, 0)], 0.0)
        return np.concatenate([data, (x[self.reg_i] - ref - self.reg_c) / self.reg_w])

    def unpack(self, x: np.ndarray) -> Fit:
        vendors = {v: {p: _dec(p, x[self.index[(f"v:{v}", p)]]) for p in VENDOR_PARAMS} for v in self.vendors}
        groups = {g: {p: _dec(p, x[self.index[(f"g:{g}", p)]]) for p in GROUP_PARAMS} for g in self.groups}
        return Fit(vendors, groups)


_WORK = ("gemm_flops", "attention_flops", "weight_bytes", "kv_bytes", "allreduces", "allreduce_bytes", "tp",
         "sequences")


def _seconds(work: SimpleNamespace, peaks: SimpleNamespace, p: SimpleNamespace) -> np.ndarray:
    compute, memory, comm, static = step_terms(work, peaks, p)
    return np.maximum(compute, memory) + comm + static


def fit(works: Sequence[PointWork]) -> Fit:
    prob = _Problem(works)
    lo, hi = prob.bounds()
    sol = least_squares(prob.residuals, prob.x0(), bounds=(lo, hi), method="trf", x_scale=1.0, max_nfev=400)
    return prob.unpack(sol.x)


def predict_with(fitted: Fit, works: Sequence[PointWork]) -> np.ndarray:
    """Predictions for `works` from a fit that may not have seen their groups (cross-validation)."""
    prob = _Problem(works)
    x = np.zeros(len(prob.layout))
    for (owner, p), i in prob.index.items():
        if owner.startswith("v:"):
            x[i] = _enc(p, fitted.vendors[owner[2:]][p])
        else:
            g = fitted.params(owner[2:])
            x[i] = _enc(p, g.kv / g.weights if p == "kv_ratio" else getattr(g, p))
    return prob.predict(x)


def vendor_entry(fitted: Fit, vendor: str, arch: str) -> dict[str, float | str]:
    """The vendor-level parameters as a serving_fit.yaml group (the fallback for an unseen stack)."""
    g = _vendor_as_group(fitted.vendors[vendor], arch)
    g["kv"] = g["weights"] * g.pop("kv_ratio")
    return {**g, "attention": fitted.vendors[vendor]["attention"],
            "allreduce_alpha_s": fitted.vendors[vendor]["allreduce_alpha_s"],
            "network": float(priors()["vendors"][vendor]["network"]["value"]), "key": f"{vendor}/*/*/{arch}"}
