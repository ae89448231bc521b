"""Leave-one-source-out cross-validation of the fitted serving model, the fit that ships, and its report.

`python -m terrazzo.cost.crossval` fits on all but one publisher document, predicts that document's
points, and repeats for every document: the errors are those of a source the model never saw. It prints
the error per vendor, metric and phase, the signed median, and whether the predicted cheapest device of
every comparable group is the measured one. `--update` also refits on every point, writes
catalog/data/serving_fit.yaml (with the cross-validated residual quantiles as each estimate's
uncertainty) and the tables in docs/cost-model.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.cost.fitting import Fit, fit, predict_with, vendor_entry
from terrazzo.cost.serving_model import ARCHITECTURES, FIT_FILE, PARAM_NAMES, PHASES, _fit
from terrazzo.cost.tco import device_usd_per_hour
from terrazzo.cost.validation import Measurement, PointWork, load_measurements, point_work, predict

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cost-model.md"
TABLE_START, TABLE_END = "<!-- validation-table:start -->", "<!-- validation-table:end -->"
COMMAND = "python -m terrazzo.cost.crossval --update"
TCO_PROFILE = "paper-2507.19635"
MIN_FOR_QUANTILES = 6


@dataclass(frozen=True)
class Row:
    point: Measurement
    predicted: float  # left out of the fit (its whole document was)
    fitted: float  # in-sample, from the fit on every point

    @property
    def error(self) -> float:
        return (self.predicted - self.point.measured.value) / self.point.measured.value

    @property
    def time_ratio(self) -> float:
        return self.point.time_ratio(self.predicted)


@lru_cache(maxsize=2)
def _works(catalog_id: int = 0) -> tuple[PointWork, ...]:
    cat = load_catalog()
    return tuple(point_work(m, cat) for m in load_measurements())


def loso(works: Sequence[PointWork]) -> np.ndarray:
    """Each point predicted by the fit on every other publisher document."""
    out = np.zeros(len(works))
    docs = sorted({w.point.doc for w in works})
    for doc in docs:
        held = [i for i, w in enumerate(works) if w.point.doc == doc]
        train = [w for w in works if w.point.doc != doc]
        out[held] = predict_with(fit(train), [works[i] for i in held])
    return out


def cross_validate(works: Sequence[PointWork] | None = None) -> tuple[list[Row], Fit]:
    works = list(works or _works())
    full = fit(works)
    fitted = predict_with(full, works)
    cv = loso(works)
    return [Row(w.point, float(p), float(f)) for w, p, f in zip(works, cv, fitted, strict=True)], full


def mape(rows: Iterable[Row]) -> float:
    errs = [abs(r.error) for r in rows]
    return 100 * float(np.mean(errs)) if errs else float("nan")


def median_signed(rows: Iterable[Row]) -> float:
    return 100 * float(np.median([r.error for r in rows]))


def by(rows: Iterable[Row], key: str) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[_key(r, key)].append(r)
    return dict(sorted(out.items()))


def _key(r: Row, key: str) -> str:
    p = r.point
    return {"vendor": p.vendor, "phase": f"{p.vendor} {p.phase}", "metric": f"{p.vendor} {p.metric}",
            "engine": f"{p.vendor}/{p.engine_id.value}", "doc": p.doc, "tp": f"{p.vendor} tp{p.tp}"}[key]


# -------------------------------------------------------------------------------- cheapest-device check


@dataclass(frozen=True)
class Group:
    """Same model, dtype and lengths measured on at least three devices (max-throughput points)."""

    label: str
    measured_usd: dict[str, float]  # device -> $ per M output tokens, best configuration
    predicted_usd: dict[str, float]

    @property
    def measured_cheapest(self) -> str:
        return min(self.measured_usd, key=self.measured_usd.__getitem__)

    @property
    def predicted_cheapest(self) -> str:
        return min(self.predicted_usd, key=self.predicted_usd.__getitem__)

    @property
    def rank_correlation(self) -> float:
        devs = sorted(self.measured_usd)
        rho = spearmanr([self.measured_usd[d] for d in devs], [self.predicted_usd[d] for d in devs]).statistic
        return float(rho)


def comparable_groups(rows: Sequence[Row], catalog: Catalog | None = None) -> list[Group]:
    cat = catalog or load_catalog()
    cells: dict[tuple[str, str, int, int], list[Row]] = defaultdict(list)
    for r in rows:
        p = r.point
        if p.metric == "aggregated_tokens_per_s":
            cells[(p.model, p.dtype, p.isl, p.osl)].append(r)
    out = []
    for (model, dtype, isl, osl), members in sorted(cells.items()):
        meas: dict[str, float] = {}
        pred: dict[str, float] = {}
        for r in members:
            usd_h = device_usd_per_hour(cat, r.point.device, cat.tco_profile(TCO_PROFILE)).usd_h * r.point.devices
            m_usd = usd_h / (r.point.measured.value * 3600) * 1e6
            p_usd = usd_h / (r.predicted * 3600) * 1e6
            meas[r.point.device] = min(meas.get(r.point.device, np.inf), m_usd)
            pred[r.point.device] = min(pred.get(r.point.device, np.inf), p_usd)
        if len(meas) >= 3:
            out.append(Group(f"{model} {dtype} {isl}/{osl}", meas, pred))
    return out


# ------------------------------------------------------------------------------------------- the fit file


def _quantiles(ratios: Sequence[float]) -> list[float] | None:
    if len(ratios) < MIN_FOR_QUANTILES:
        return None
    lo, hi = np.quantile(ratios, [0.1, 0.9])
    return [round(float(lo), 4), round(float(hi), 4)]


def uncertainty(rows: Sequence[Row]) -> dict[str, dict[str, list[float]]]:
    """p10/p90 of measured ÷ predicted time per (vendor/engine), vendor and overall, per phase and all."""
    keys: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        for k in (f"{r.point.vendor}/{r.point.engine_id.value}", f"{r.point.vendor}/*", "*/*"):
            keys[k].append(r)
    out: dict[str, dict[str, list[float]]] = {}
    for k, members in sorted(keys.items()):
        entry = {ph: q for ph in PHASES if (q := _quantiles([r.time_ratio for r in members if r.point.phase == ph]))}
        if (q := _quantiles([r.time_ratio for r in members])) is not None:
            entry["all"] = q
        out[k] = entry
    return out


def write_fit(full: Fit, rows: Sequence[Row], path: Path = FIT_FILE) -> None:
    groups: dict[str, dict[str, float | str]] = {}
    for g in sorted(full.groups):
        p = full.params(g)
        groups[g] = {k: round(float(getattr(p, k)), 9) for k in PARAM_NAMES}
    for vendor in sorted(full.vendors):
        for arch in ARCHITECTURES:
            entry = vendor_entry(full, vendor, arch)
            key = str(entry.pop("key"))
            groups[key] = {k: round(float(v), 9) for k, v in entry.items()}
    docs = sorted({r.point.doc for r in rows})
    head = (f"# GENERATED by `{COMMAND}`: do not edit. Efficiencies fitted (bounded, η ≤ 1) on the {len(rows)} "
            f"points of\n# catalog/data/measurements.yaml from {len(docs)} publisher documents, towards the priors "
            "of serving_priors.yaml.\n# `uncertainty`: p10/p90 of measured ÷ predicted time, leave-one-source-out, "
            "per vendor/engine and phase.\n")
    body = {"source": f"fitted: {COMMAND} on {len(rows)} points, {len(docs)} documents", "groups": groups,
            "uncertainty": uncertainty(rows)}
    path.write_text(head + yaml.safe_dump(body, sort_keys=False, width=120))


# ---------------------------------------------------------------------------------------------- reports


def summary(rows: Sequence[Row], groups: Sequence[Group]) -> str:
    """Markdown: CV error overall, per vendor, per vendor and phase / metric / engine / tp; the ranking."""
    out = ["| slice | points | LOSO-CV MAPE | median signed error | in-sample MAPE |", "|---|---|---|---|---|"]

    def line(label: str, rs: list[Row]) -> str:
        fit_mape = 100 * float(np.mean([abs(r.fitted / r.point.measured.value - 1) for r in rs]))
        return f"| {label} | {len(rs)} | {mape(rs):.1f} % | {median_signed(rs):+.1f} % | {fit_mape:.1f} % |"

    out.append(line("all", list(rows)))
    for key in ("vendor", "phase", "metric", "engine", "tp", "doc"):
        out += [line(k, v) for k, v in by(rows, key).items()]
    hits = sum(g.predicted_cheapest == g.measured_cheapest for g in groups)
    rho = np.mean([g.rank_correlation for g in groups]) if groups else float("nan")
    out += ["", f"Cheapest device (paper TCO profile, $ per M output tokens) predicted right in {hits} of "
            f"{len(groups)} comparable groups; mean Spearman rank correlation {rho:.2f}.", "",
            "| group | devices | measured cheapest | predicted cheapest | rank ρ |", "|---|---|---|---|---|"]
    out += [f"| {g.label} | {len(g.measured_usd)} | {g.measured_cheapest} | {g.predicted_cheapest} | "
            f"{g.rank_correlation:.2f} |" for g in groups]
    return "\n".join(out)


def point_table(rows: Sequence[Row]) -> str:
    sources = {doc: f"S{i + 1}" for i, doc in enumerate(dict.fromkeys(r.point.doc for r in rows))}
    out = ["| id | setup | engine | ISL/OSL | metric | measured | LOSO-CV predicted | error | source |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.point
        setup = f"{p.devices}× {p.device} tp{p.tp}, {p.model} {p.dtype}"
        out.append(f"| {p.id} | {setup} | {p.engine_id.value} {p.engine_version} | {p.isl}/{p.osl} | {p.metric} | "
                   f"{p.measured.value:,.4g} {p.measured.unit} | {r.predicted:,.4g} | {r.error * 100:+.0f} % | "
                   f"[{sources[p.doc]}]({p.source}) |")
    out += ["", "Sources (a source is one publisher document; each point's `published` field gives the table, row "
            "and column):", ""]
    urls = {r.point.doc: r.point.source for r in rows}
    out += [f"- {label}: {urls[doc]}" + (f" (document `{doc}`, several snapshots)" if doc != urls[doc] else "")
            for doc, label in sources.items()]
    return "\n".join(out)


def measured_kernel_check(rows: Sequence[Row]) -> str:
    """Where AIConfigurator's tables cover a point (and so answer for the planner): their error there, next
    to the fitted model's cross-validated error on the same points. The tables add the fitted engine
    overhead, fitted on every point, so their figure is not a held-out one."""
    cat = load_catalog()
    pairs = []
    for r in rows:
        with_tables = predict(r.point, cat, measured_kernels=True)
        if with_tables != predict(r.point, cat):
            pairs.append((with_tables / r.point.measured.value - 1, r.error))
    if not pairs:
        return "No point lies inside a shipped AIConfigurator table."
    aic, cvd = (np.array(x) for x in zip(*pairs, strict=True))
    return (f"AIConfigurator tables (measured kernels + fitted engine overhead) cover {len(pairs)} points: "
            f"MAPE {100 * np.mean(np.abs(aic)):.1f} %, median signed {100 * np.median(aic):+.1f} %; the fitted "
            f"model's LOSO-CV MAPE on the same points is {100 * np.mean(np.abs(cvd)):.1f} %.")


def render(rows: Sequence[Row]) -> str:
    groups = comparable_groups(rows)
    return f"{summary(rows, groups)}\n\n{measured_kernel_check(rows)}\n\n{point_table(rows)}"


def docs_table(text: str) -> str:
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip("\n")


def write_docs(table: str, docs: Path = DOCS) -> None:
    text = docs.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    docs.write_text(f"{text[:start]}\n{table}\n{text[end:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true",
                        help="write catalog/data/serving_fit.yaml and the tables in docs/cost-model.md")
    args = parser.parse_args(argv)
    rows, full = cross_validate()
    if args.update:
        write_fit(full, rows)
        _fit.cache_clear()  # the table's AIConfigurator line prices with the fit just written
        table = render(rows)
        write_docs(table)
    else:
        table = render(rows)
    print(table)


if __name__ == "__main__":
    main()
