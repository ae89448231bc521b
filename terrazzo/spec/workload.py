"""Traffic offered to an agent: how requests arrive and how long their prompts and answers are."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from terrazzo.limits import MAX_DURATION_S
from terrazzo.spec.distributions import Dist, PerSecond, SecondsDist, TokensDist, quantity
from terrazzo.spec.rate_curve import RateCurve


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf or .nan anywhere


class Arrival(Strict):
    """Poisson (cv 1), bursty gamma inter-arrivals (cv > 1), or replay of a trace file."""

    process: Literal["poisson", "gamma", "trace"] = "poisson"
    rate_per_s: PerSecond | None = Field(default=None, description="mean requests per second")
    cv: float = Field(default=1.0, gt=0, description="coefficient of variation of inter-arrival times (gamma)")
    trace: str | None = Field(default=None, description="path of a trace file (trace process)")
    trace_format: Literal["azure", "burstgpt", "simple"] = "azure"

    @model_validator(mode="after")
    def _complete(self) -> Arrival:
        if self.process == "trace":
            if not self.trace:
                raise ValueError("a trace arrival needs 'trace' (path to the trace file)")
        elif self.rate_per_s is None:
            raise ValueError(f"a {self.process} arrival needs 'rate_per_s' (requests per second, e.g. 5)")
        if self.process == "poisson" and self.cv != 1.0:
            raise ValueError("a poisson process has cv 1; use process: gamma for bursty traffic")
        return self


class TokenOverride(Strict):
    input_tokens: TokensDist | None = None
    output_tokens: TokensDist | None = None


MAX_TURNS = 10_000  # turns per session: past this a session is a standing service, not a chat


def _count(raw: object) -> object:
    return {"dist": "fixed", "value": raw} if isinstance(raw, int | float) and not isinstance(raw, bool) else raw


def _turn_range(d: Dist) -> Dist:
    if d.expected < 1:
        raise ValueError(f"a session has at least one turn; this distribution's mean is {d.expected:g}")
    worst = max([getattr(d, p) or 0.0 for p in ("value", "low", "high", "mean", "std")] + list(d.values or []))
    if worst > MAX_TURNS:
        raise ValueError(f"{worst:g} turns is over the limit of {MAX_TURNS} turns per session")
    return d


TurnsDist = Annotated[Dist, BeforeValidator(_count), AfterValidator(_turn_range)]


class Sessions(Strict):
    """Multi-turn sessions: a session's `turns` requests come one after another (the next turn arrives
    `think_time_s` after the previous answer) and its conversation carries across turns.

    The workload's `arrival` rate stays the rate of requests (turns), so a plan that ignores sessions still
    serves the right load; sessions open at rate / E[turns] (`session_rate_per_s`).
    """

    turns: TurnsDist
    think_time_s: SecondsDist = Dist.fixed(0.0)

    def draw_turns(self, rng: np.random.Generator) -> int:
        """One session's number of turns: a draw rounded to a whole number, at least one."""
        return max(1, round(float(self.turns.sample(rng))))

    def turn_moments(self, samples: int = 20_000) -> tuple[float, float]:
        """(E[turns], E[turns·(turns-1)/2]) as `draw_turns` draws them; fixed seed, so plans are reproducible."""
        if self.turns.dist == "fixed":
            n = max(1.0, float(round(self.turns.expected)))
            return n, n * (n - 1) / 2
        draws = np.maximum(1.0, np.round(self.turns.sample(np.random.default_rng(0), samples)))
        return float(draws.mean()), float((draws * (draws - 1) / 2).mean())

    def session_rate_per_s(self, request_rate_per_s: float) -> float:
        return request_rate_per_s / self.turn_moments()[0]


class Workload(Strict):
    name: str = "workload"
    arrival: Arrival
    duration_s: Annotated[float, quantity("time", "s"), Field(ge=0, le=MAX_DURATION_S)] | None = None
    tokens: dict[str, TokenOverride] = Field(
        default_factory=dict, description="per LLM node id: token distributions replacing the agent's"
    )
    rate_curve: RateCurve | None = Field(default=None, description="rate over hours: `terrazzo plan` makes a day "
                                         "plan (a peak fleet against an autoscaled schedule)")
    sessions: Sessions | None = Field(default=None, description="multi-turn sessions (the arrival rate counts "
                                      "their turns); none means every request stands alone")

    @model_validator(mode="before")
    @classmethod
    def _curve_arrival(cls, data: object) -> object:
        """A rate curve without an `arrival` plans single-rate commands for its peak, Poisson."""
        if isinstance(data, dict) and "arrival" not in data and isinstance(data.get("rate_curve"), dict):
            rates = data["rate_curve"].get("rates_per_s")
            if isinstance(rates, list) and rates and all(isinstance(r, int | float) for r in rates):
                return {**data, "arrival": {"process": "poisson", "rate_per_s": max(rates)}}
        return data

    @model_validator(mode="after")
    def _curve_source(self) -> Workload:
        if self.rate_curve is not None and self.rate_curve.rates_per_s is None and self.arrival.process != "trace":
            raise ValueError("a rate_curve without rates_per_s is read off the trace: set arrival: {process: trace, "
                             "trace: FILE} or give rates_per_s (one rate per interval)")
        return self
