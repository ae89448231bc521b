"""A workload's arrival rate over hours: piecewise constant per interval (a day of hourly rates, say),
or read off an hours-long trace (the workload's `arrival.trace`), for day plans (verify/day_plan.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from terrazzo.spec.distributions import Seconds


class RateCurve(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: Seconds = Field(default=3600.0, gt=0, description="length of one interval (one pool-size step)")
    rates_per_s: list[float] | None = Field(default=None, description="mean requests/s in each interval")
    peak_window_s: Seconds = Field(default=300.0, gt=0, description="from a trace: an interval's rate is its "
                                   "busiest window of this length, so a burst inside an hour is planned for")
    source: str | None = Field(default=None, description="where the shape comes from")

    @model_validator(mode="after")
    def _rates(self) -> RateCurve:
        if self.rates_per_s is not None:
            if not self.rates_per_s:
                raise ValueError("rates_per_s needs at least one rate (requests/s per interval)")
            if any(r < 0 for r in self.rates_per_s):
                raise ValueError("rates_per_s must be zero or more")
            if max(self.rates_per_s) <= 0:
                raise ValueError("rates_per_s needs a positive rate in some interval")
        return self

    @property
    def duration_s(self) -> float:
        return self.interval_s * len(self.rates_per_s or ())
