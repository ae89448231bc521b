"""Published serving measurements, and the cost model's prediction of each through the cost functions.

Each point in catalog/data/measurements.yaml is one figure from one public page, with the deployment and
engine it ran on. `predict()` answers it with terrazzo.cost.llm exactly as the planner would;
`point_work()` extracts the same point's work counts once, so `fitting.py` can evaluate the fitted model
on every point at once while fitting (a test checks the two paths agree). Cross-validation and the
report live in terrazzo.cost.crossval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from terrazzo.catalog.catalog_loader import DATA_DIR, Catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import (
    PREFILL_TOKEN_BUDGET,
    Deployment,
    aggregated_tokens_per_s,
    decode_step,
    decode_work,
    max_batch,
    mean_decode_context,
    memory_use,
    prefill,
    prefill_work,
)
from terrazzo.cost.serving_model import Peaks, ServingParams, StepWork, engine_max_batch, group_key, serving_params

MEASUREMENTS = DATA_DIR / "measurements.yaml"
Metric = Literal["aggregated_tokens_per_s", "request_latency_s", "prefill_s"]
PHASE_OF: dict[str, str] = {"aggregated_tokens_per_s": "aggregated", "request_latency_s": "decode",
                            "prefill_s": "prefill"}


class Measured(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(gt=0)
    unit: str


class Measurement(BaseModel):
    """One published figure and the deployment, engine and workload it ran."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    vendor: Literal["nvidia", "amd", "intel"]
    source: str
    document: str | None = Field(default=None, description="publisher document, when several URLs are one page")
    published: str = Field(min_length=8, description="where on the page the figure is")
    engine: str = Field(description="the engine as the page describes it")
    engine_id: Engine
    engine_version: str
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
    attention_dp: bool = Field(default=False, description="MoE served attention data-parallel, experts "
                               "expert-parallel over the tp ranks (the page's configuration says so)")
    metric: Metric
    measured: Measured

    @field_validator("source")
    @classmethod
    def _url(cls, source: str) -> str:
        if not source.startswith("https://"):
            raise ValueError("source must be the https URL of the page the figure is copied from")
        return source

    @property
    def replicas(self) -> int:
        return self.devices // (self.tp * self.pp)

    @property
    def doc(self) -> str:
        """The publisher document: the unit left out together in cross-validation."""
        return self.document or self.source

    @property
    def engine_version_id(self) -> EngineVersion:
        return EngineVersion(self.engine_id, self.engine_version)

    @property
    def phase(self) -> str:
        return PHASE_OF[self.metric]

    def time_ratio(self, predicted: float) -> float:
        """Measured ÷ predicted *time* (a throughput predicted too high is a time predicted too low)."""
        if self.metric == "aggregated_tokens_per_s":
            return predicted / self.measured.value
        return self.measured.value / predicted


def load_measurements(path: Path = MEASUREMENTS) -> list[Measurement]:
    data = yaml.safe_load(path.read_text())
    return [Measurement.model_validate(item) for item in data["measurements"]]


@dataclass(frozen=True)
class PointWork:
    """A point's work counts, independent of the efficiencies: what the fit evaluates."""

    point: Measurement
    group: str
    batch: int
    prefill_batch: int
    decode: StepWork
    prefill: StepWork
    peaks: Peaks
    fits: bool


def _deployment(m: Measurement, catalog: Catalog, serving: ServingParams | None = None,
                measured_kernels: bool = False) -> Deployment:
    if m.devices % (m.tp * m.pp):
        raise ValueError(f"{m.id}: {m.devices} devices is not a whole number of tp*pp={m.tp * m.pp} replicas")
    dep = deployment(catalog, m.model, m.device, m.dtype, m.tp, m.pp, engine=m.engine_version_id)
    if m.attention_dp:  # expert parallel: the moe-ep group's efficiencies
        dep = replace(dep, attention_dp=True,
                      serving=serving_params(m.vendor, m.engine_version_id, dep.model.is_moe, expert_parallel=True))
    if not measured_kernels:
        dep = replace(dep, kernels=None)  # the fitted model alone: what cross-validation measures
    return replace(dep, serving=serving) if serving is not None else dep


def _batch(dep: Deployment, m: Measurement) -> int:
    """The stated batch, or the memory-limited one (KV of every sequence at isl+osl) under the benchmark's
    cap, else under the engine's default concurrency limit."""
    if m.batch != "max":
        return m.batch
    limit = max_batch(dep, mean_decode_context(m.isl, m.osl), None, peak_context=m.isl + m.osl)
    if limit < 1:
        raise ValueError(f"{m.id}: {m.model} {m.dtype} does not fit on {m.devices}x {m.device} at tp={m.tp}")
    return min(limit, m.batch_cap or engine_max_batch(m.engine_id))


def _prefill_batch(m: Measurement, batch: int) -> int:
    """Prompts in the prefill pass the metric needs: a static batch prefills all at once; a serving engine
    packs prompts up to its token budget (terrazzo.cost.llm.prefill_share_s)."""
    if m.metric == "aggregated_tokens_per_s":
        return max(1, min(batch, PREFILL_TOKEN_BUDGET // max(m.isl, 1)))
    return batch


def point_work(m: Measurement, catalog: Catalog) -> PointWork:
    if m.pp != 1:
        raise ValueError(f"{m.id}: the fit handles pp=1 points only")
    dep = _deployment(m, catalog)
    batch = _batch(dep, m)
    n_pre = _prefill_batch(m, batch)
    chunk = m.isl * batch if m.metric == "prefill_s" else 0
    fits = memory_use(dep, batch, m.isl + m.osl, prefill_tokens=chunk).fits
    return PointWork(m, group_key(m.vendor, m.engine_version_id, dep.model.is_moe, dep.attention_dp), batch, n_pre,
                     decode_work(dep, batch, mean_decode_context(m.isl, m.osl)), prefill_work(dep, m.isl, n_pre),
                     dep.peaks, fits)


def predict(m: Measurement, catalog: Catalog, serving: ServingParams | None = None,
            measured_kernels: bool = False) -> float:
    """The model's value for `m.metric` through the planner's cost functions (with `serving` in place of
    the shipped fit when given: cross-validation passes the fold's parameters). `measured_kernels` lets
    AIConfigurator's tables answer where they cover the point, as they do for the planner."""
    dep = _deployment(m, catalog, serving, measured_kernels)
    batch = _batch(dep, m)
    if m.metric == "prefill_s":
        return prefill(dep, m.isl, batch).latency_s
    if m.metric == "aggregated_tokens_per_s":
        return aggregated_tokens_per_s(dep, m.isl, m.osl, batch) * m.replicas
    step = decode_step(dep, batch, mean_decode_context(m.isl, m.osl))
    return prefill(dep, m.isl, batch).latency_s + (m.osl - 1) * step.latency_s
