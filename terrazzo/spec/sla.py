"""Service-level objectives: per-LLM TTFT/TBT limits and an end-to-end latency percentile."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from terrazzo.spec.distributions import Seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf or .nan anywhere


class LlmLimits(Strict):
    ttft_s: Seconds | None = Field(default=None, description="time to first token")
    tbt_s: Seconds | None = Field(default=None, description="time between tokens")


class EndToEnd(Strict):
    latency_s: Seconds = Field(gt=0)
    percentile: float = Field(default=99.0, gt=0, le=100)


class Sla(Strict):
    """`interactive` minimises TCO under the limits; `offline` maximises tokens per second per dollar."""

    mode: Literal["interactive", "offline"] = "interactive"
    end_to_end: EndToEnd | None = None
    llm_default: LlmLimits = LlmLimits()
    llm: dict[str, LlmLimits] = Field(default_factory=dict, description="per LLM node id")
    penalty_usd_h_per_s: float = Field(
        default=math.inf, gt=0, description="soft SLA: $/h added per second of end-to-end slack; inf is hard"
    )
    utilisation_cap: float = Field(default=0.8, gt=0, le=1, description="largest planned load per replica")

    @model_validator(mode="after")
    def _meaningful(self) -> Sla:
        if self.mode == "interactive" and self.end_to_end is None and not self.llm and self.llm_default == LlmLimits():
            raise ValueError("an interactive SLA needs 'end_to_end' or LLM limits ('llm_default' or 'llm')")
        return self

    def limits_for(self, node_id: str) -> LlmLimits:
        own = self.llm.get(node_id, LlmLimits())
        return LlmLimits(
            ttft_s=own.ttft_s if own.ttft_s is not None else self.llm_default.ttft_s,
            tbt_s=own.tbt_s if own.tbt_s is not None else self.llm_default.tbt_s,
        )
