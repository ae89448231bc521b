"""Traffic offered to an agent: how requests arrive and how long their prompts and answers are."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from terrazzo.spec.distributions import PerSecond, TokensDist, quantity
from terrazzo.spec.limits import MAX_DURATION_S


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


class Workload(Strict):
    name: str = "workload"
    arrival: Arrival
    duration_s: Annotated[float, quantity("time", "s"), Field(ge=0, le=MAX_DURATION_S)] | None = None
    tokens: dict[str, TokenOverride] = Field(
        default_factory=dict, description="per LLM node id: token distributions replacing the agent's"
    )
