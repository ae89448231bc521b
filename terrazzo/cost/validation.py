"""The cost model against published measurements, with no per-point factor and no tuning.

Each point in catalog/data/measurements.yaml is one figure from a public page plus the deployment it
ran on. `validate()` predicts it with the shipped catalog (efficiency defaults as they are) and the cost
functions of terrazzo.cost.llm, so the error column is the model's honest error. The `predicted` value
recorded beside each point pins those numbers: tests fail when a change to the model or the catalog
moves them, and `python -m terrazzo.cost.validation --update` re-records them and rewrites the table in
docs/cost-model.md after an intended change.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from terrazzo.catalog.catalog_loader import DATA_DIR, Catalog, load_catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import (
    Deployment,
    aggregated_tokens_per_s,
    decode_step,
    max_batch,
    mean_decode_context,
    memory_use,
    prefill,
)
from terrazzo.cost.roofline import Estimate

MEASUREMENTS = DATA_DIR / "measurements.yaml"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cost-model.md"
TABLE_START, TABLE_END = "<!-- validation-table:start -->", "<!-- validation-table:end -->"
Metric = Literal["aggregated_tokens_per_s", "request_latency_s", "prefill_s"]


class Measured(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(gt=0)
    unit: str


class Measurement(BaseModel):
    """One published figure, the deployment it ran on, and the prediction it is compared with."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    vendor: Literal["nvidia", "amd", "intel"]
    source: str
    published: str = Field(min_length=8, description="where on the page the figure is")
    engine: str
    model: str
    served_as: str
    device: str
    devices: int = Field(ge=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    dtype: str
    isl: int = Field(ge=1)
    osl: int = Field(ge=1)
    batch: int | Literal["max"]
    batch_cap: int | None = Field(default=None, ge=1, description="concurrency limit the benchmark set")
    metric: Metric
    measured: Measured
    predicted: float | None = None

    @field_validator("source")
    @classmethod
    def _url(cls, source: str) -> str:
        if not source.startswith("https://"):
            raise ValueError("source must be the https URL of the page the figure is copied from")
        return source

    @property
    def replicas(self) -> int:
        return self.devices // (self.tp * self.pp)


@dataclass(frozen=True)
class Row:
    """A point with the model's prediction, the batch that prediction used and what bounds it."""

    point: Measurement
    predicted: float
    batch: int
    bound: str
    fits: bool

    @property
    def error_pct(self) -> float:
        return (self.predicted - self.point.measured.value) / self.point.measured.value * 100


def load_measurements(path: Path = MEASUREMENTS) -> list[Measurement]:
    data = yaml.safe_load(path.read_text())
    return [Measurement.model_validate(item) for item in data["measurements"]]


def _batch(dep: Deployment, m: Measurement) -> int:
    """The stated batch, or the memory-limited one (KV of every sequence at isl+osl) under the cap."""
    if m.batch != "max":
        return m.batch
    limit = max_batch(dep, mean_decode_context(m.isl, m.osl), None, peak_context=m.isl + m.osl)
    return min(limit, m.batch_cap) if m.batch_cap else limit


def predict(m: Measurement, catalog: Catalog) -> Row:
    """The model's value for `m.metric`, computed only from the existing cost functions."""
    if m.devices % (m.tp * m.pp):
        raise ValueError(f"{m.id}: {m.devices} devices is not a whole number of tp*pp={m.tp * m.pp} replicas")
    dep = deployment(catalog, m.model, m.device, m.dtype, m.tp, m.pp)
    batch = _batch(dep, m)
    if batch < 1:
        raise ValueError(f"{m.id}: {m.model} {m.dtype} does not fit on {m.devices}x {m.device} at tp={m.tp}")
    if m.metric == "prefill_s":
        est: Estimate = prefill(dep, m.isl, batch)
        value = est.latency_s
    else:
        est = decode_step(dep, batch, mean_decode_context(m.isl, m.osl))
        value = (aggregated_tokens_per_s(dep, m.isl, m.osl, batch) * m.replicas
                 if m.metric == "aggregated_tokens_per_s"
                 else prefill(dep, m.isl, batch).latency_s + (m.osl - 1) * est.latency_s)
    # Serving engines prefill in chunks, so only a prefill-only point holds all its prompt tokens at once.
    chunk = m.isl * batch if m.metric == "prefill_s" else 0
    fits = memory_use(dep, batch, m.isl + m.osl, prefill_tokens=chunk).fits
    return Row(m, value, batch, est.bound, fits)


def validate(catalog: Catalog | None = None, path: Path = MEASUREMENTS) -> list[Row]:
    cat = catalog or load_catalog()
    return [predict(m, cat) for m in load_measurements(path)]


def sig3(x: float) -> float:
    """Three significant figures: what is recorded, and printed, as a prediction."""
    return float(f"{x:.3g}")


def _num(x: float) -> str:
    return f"{x:,.10g}" if x >= 1000 else f"{x:g}"


def vendor_mape(rows: Iterable[Row]) -> dict[str, tuple[int, float]]:
    """Points and mean absolute % error per vendor."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r.point.vendor, []).append(abs(r.error_pct))
    return {v: (len(e), sum(e) / len(e)) for v, e in sorted(by.items())}


def render_table(rows: list[Row] | None = None) -> str:
    """Markdown: one line per point (predicted at 3 significant figures, source cited), then the error per
    vendor, then the sources."""
    rows = validate() if rows is None else rows
    sources = {url: f"S{i + 1}" for i, url in enumerate(dict.fromkeys(r.point.source for r in rows))}
    out = [
        "| id | setup | ISL/OSL | metric | batch | bound | measured | predicted | error | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.point
        setup = f"{p.devices}× {p.device} tp{p.tp}{f' pp{p.pp}' if p.pp > 1 else ''}, {p.model} {p.dtype}"
        how = "" if p.batch != "max" else " (cap)" if r.batch == p.batch_cap else " (max)"
        batch = f"{r.batch}{how}{'' if r.fits else ' †'}"
        out.append(
            f"| {p.id} | {setup} | {p.isl}/{p.osl} | {p.metric} | {batch} | {r.bound} | "
            f"{_num(p.measured.value)} {p.measured.unit} | {_num(sig3(r.predicted))} | {r.error_pct:+.0f} % | "
            f"[{sources[p.source]}]({p.source}) |"
        )
    mape = vendor_mape(rows)
    out += ["", "| vendor | points | mean absolute error |", "|---|---|---|"]
    out += [f"| {v} | {n} | {e:.0f} % |" for v, (n, e) in mape.items()]
    every = [abs(r.error_pct) for r in rows]
    out.append(f"| all | {len(every)} | {sum(every) / len(every):.0f} % |")
    out += ["", "Sources (the exact table, column and row of each figure is the point's `published` field):", ""]
    out += [f"- {label}: {url}" for url, label in sources.items()]
    return "\n".join(out)


def docs_table(text: str) -> str:
    """The generated block between the markers in docs/cost-model.md."""
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip("\n")


def record(rows: list[Row], path: Path = MEASUREMENTS, docs: Path = DOCS) -> None:
    """Write each point's prediction (3 significant figures) into the YAML and the table into the docs."""
    values = {r.point.id: sig3(r.predicted) for r in rows}
    current: str | None = None
    lines = []
    for line in path.read_text().splitlines(keepends=True):
        if m := re.match(r"\s*- id:\s*(\S+)", line):
            current = m.group(1)
        elif current in values and re.match(r"\s+predicted:", line):
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}predicted: {values[current]:g}\n"
        lines.append(line)
    path.write_text("".join(lines))
    text = docs.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    docs.write_text(f"{text[:start]}\n{render_table(rows)}\n{text[end:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true",
                        help="re-record predictions in measurements.yaml and the table in docs/cost-model.md")
    args = parser.parse_args(argv)
    rows = validate()
    if args.update:
        record(rows)
    print(render_table(rows))


if __name__ == "__main__":
    main()
