"""Stage-option scenarios given as data (such as the paper's Table 3), turned into a selection Problem."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from terrazzo.plan.select import Edge, Option, Problem, Stage, Transfer
from terrazzo.spec.distributions import Seconds
from terrazzo.spec.source import read_yaml
from terrazzo.spec.spec_loader import validate

Per = Literal["input_tokens", "output_tokens", "request"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionSpec(Strict):
    latency_s: Seconds
    usd_per_unit: float = Field(ge=0, description="dollars per unit of the stage's `per`")


class StageSpec(Strict):
    per: Per
    options: dict[str, OptionSpec] = Field(min_length=1)


class TransferSpec(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    src_pool: str
    dst_pool: str
    latency_s: Seconds
    usd_per_unit: float = Field(ge=0)
    per: Per


class Request(Strict):
    input_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)


class Scenario(Strict):
    name: str
    source: str
    request: Request
    deadline_s: Seconds = Field(gt=0)
    stages: dict[str, StageSpec] = Field(min_length=1)
    order: list[tuple[str, str]] = Field(default_factory=list, description="stage dependencies (from, to)")
    transfers: list[TransferSpec] = Field(default_factory=list)
    expected: dict[str, str] | None = Field(default=None, description="published choice, stage → pool")

    def units(self, per: Per) -> float:
        return {"input_tokens": self.request.input_tokens, "output_tokens": self.request.output_tokens,
                "request": 1}[per]

    def problem(self) -> Problem:
        stages = tuple(
            Stage(name, tuple(Option(pool, o.latency_s, o.usd_per_unit * self.units(st.per))
                              for pool, o in st.options.items()))
            for name, st in self.stages.items()
        )
        edges = []
        for src, dst in self.order:
            routes = {
                (t.src_pool, t.dst_pool): Transfer(t.latency_s, t.usd_per_unit * self.units(t.per))
                for t in self.transfers if (t.src, t.dst) == (src, dst)
            }
            edges.append(Edge(src, dst, routes))
        return Problem(stages, tuple(edges), self.deadline_s)


def load_scenario(path: str | Path) -> Scenario:
    src = read_yaml(path)
    scenario = validate(src, Scenario)
    for i, (a, b) in enumerate(scenario.order):
        for name in (a, b):
            if name not in scenario.stages:
                raise src.error(f"'{name}' is not a stage", ("order", i), f"use one of: {', '.join(scenario.stages)}")
    return scenario
