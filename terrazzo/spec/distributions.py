"""Distributions of token counts, latencies and sizes: a mean for the planner, samples for the simulator.

Written in a spec as a bare number (fixed) or a mapping with `dist:`; numbers may carry units
("300 ms") when the field's name says its unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from terrazzo.limits import MAX_BYTES, MAX_GBIT_PER_S, MAX_RATE_PER_S, MAX_SECONDS, MAX_TOKENS
from terrazzo.units import parse_quantity

T = TypeVar("T")


def _given(param: T | None) -> T:
    """A parameter that Dist's validator has checked is set for this kind of distribution."""
    assert param is not None
    return param


class Dist(BaseModel):
    """One non-negative random quantity. Parameters are in the unit of the field that holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dist: Literal["fixed", "uniform", "normal", "lognormal", "exponential", "empirical"] = "fixed"
    value: float | None = Field(default=None, ge=0)
    low: float | None = Field(default=None, ge=0)
    high: float | None = Field(default=None, ge=0)
    mean: float | None = Field(default=None, ge=0)
    std: float | None = Field(default=None, ge=0)
    cv: float | None = Field(default=None, ge=0, description="coefficient of variation (lognormal)")
    values: list[float] | None = None
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _params(self) -> Dist:
        need = {
            "fixed": ("value",), "uniform": ("low", "high"), "normal": ("mean", "std"),
            "lognormal": ("mean", "cv"), "exponential": ("mean",), "empirical": ("values",),
        }[self.dist]
        missing = [p for p in need if getattr(self, p) is None]
        if missing:
            raise ValueError(f"a {self.dist} distribution needs {', '.join(need)}; missing {', '.join(missing)}")
        allowed = set(need) | ({"weights"} if self.dist == "empirical" else set())
        extra = [p for p in ("value", "low", "high", "mean", "std", "cv", "values", "weights")
                 if p not in allowed and getattr(self, p) is not None]
        if extra:
            raise ValueError(f"a {self.dist} distribution takes {', '.join(sorted(allowed))}, not {', '.join(extra)}")
        if self.dist == "uniform" and _given(self.low) > _given(self.high):
            raise ValueError(f"uniform low {self.low} is above high {self.high}")
        if self.dist == "empirical":
            if not self.values or any(v < 0 for v in self.values):
                raise ValueError("empirical values must be a non-empty list of non-negative numbers")
            if self.weights is not None and (
                len(self.weights) != len(self.values) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0
            ):
                raise ValueError("empirical weights must be non-negative, one per value, not all zero")
        return self

    @classmethod
    def fixed(cls, value: float) -> Dist:
        return cls(dist="fixed", value=value)

    @property
    def expected(self) -> float:
        """Mean of the distribution as sampled (normal is truncated at zero, which raises its mean)."""
        match self.dist:
            case "fixed":
                return float(_given(self.value))
            case "uniform":
                return (_given(self.low) + _given(self.high)) / 2
            case "normal":
                mu, sd = float(_given(self.mean)), float(_given(self.std))
                if sd == 0:
                    return mu
                z = mu / sd
                pdf, cdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(z / math.sqrt(2)))
                return mu * cdf + sd * pdf
            case "lognormal" | "exponential":
                return float(_given(self.mean))
            case _:
                values = _given(self.values)
                w = np.asarray(self.weights if self.weights is not None else [1.0] * len(values))
                return float(np.dot(w / w.sum(), values))

    def sample(self, rng: np.random.Generator, n: int | None = None) -> Any:
        """Draw `n` samples (a scalar when n is None); never negative."""
        size = n
        match self.dist:
            case "fixed":
                out = np.full(size or 1, self.value, dtype=float)
            case "uniform":
                out = rng.uniform(_given(self.low), _given(self.high), size or 1)
            case "normal":
                out = np.maximum(rng.normal(_given(self.mean), _given(self.std), size or 1), 0.0)
            case "lognormal":
                mean, cv = float(_given(self.mean)), float(_given(self.cv))
                sigma2 = math.log1p(cv * cv)
                mu = math.log(mean) - sigma2 / 2 if mean > 0 else -math.inf
                out = rng.lognormal(mu, math.sqrt(sigma2), size or 1) if mean > 0 else np.zeros(size or 1)
            case "exponential":
                out = rng.exponential(_given(self.mean), size or 1)
            case _:
                values = _given(self.values)
                w = np.asarray(self.weights if self.weights is not None else [1.0] * len(values))
                out = rng.choice(np.asarray(values), size or 1, p=w / w.sum())
        return out if n is not None else float(out[0])


_UNIT_PARAMS = ("value", "low", "high", "mean", "std")


def _in_unit(dimension: str, unit: str) -> Callable[[Any], Any]:
    def convert(raw: Any) -> Any:
        if isinstance(raw, int | float | str) and not isinstance(raw, bool):
            return {"dist": "fixed", "value": parse_quantity(raw, dimension, unit)}
        if isinstance(raw, dict):
            out = dict(raw)
            for key in _UNIT_PARAMS:
                if key in out and isinstance(out[key], str):
                    out[key] = parse_quantity(out[key], dimension, unit)
            if isinstance(out.get("values"), list):
                out["values"] = [parse_quantity(v, dimension, unit) if isinstance(v, str) else v for v in out["values"]]
            return out
        return raw

    return convert


def quantity(dimension: str, unit: str) -> BeforeValidator:
    """Validator for a plain number field whose name ends in `unit`: accepts '300 ms' and the like."""
    return BeforeValidator(lambda raw: parse_quantity(raw, dimension, unit) if isinstance(raw, str) else raw)


def _at_most(limit: float, unit: str) -> AfterValidator:
    """Every parameter of the distribution within `limit` (limits.py says why each exists)."""
    def check(d: Dist) -> Dist:
        params = [getattr(d, p) for p in _UNIT_PARAMS if getattr(d, p) is not None] + list(d.values or [])
        worst = max(params, default=0.0)
        if worst > limit:
            raise ValueError(f"{worst:g} {unit} is over the limit of {limit:g} {unit} terrazzo plans for")
        return d

    return AfterValidator(check)


TokensDist = Annotated[Dist, BeforeValidator(_in_unit("tokens", "tokens")), _at_most(MAX_TOKENS, "tokens")]
SecondsDist = Annotated[Dist, BeforeValidator(_in_unit("time", "s")), _at_most(MAX_SECONDS, "s")]
BytesDist = Annotated[Dist, BeforeValidator(_in_unit("bytes", "b")), _at_most(MAX_BYTES, "bytes")]
Seconds = Annotated[float, quantity("time", "s"), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Bytes = Annotated[float, quantity("bytes", "b"), Field(ge=0, le=MAX_BYTES, allow_inf_nan=False)]
GbitPerS = Annotated[float, quantity("bits_per_s", "gbit/s"), Field(gt=0, le=MAX_GBIT_PER_S, allow_inf_nan=False)]
PerSecond = Annotated[float, quantity("rate", "/s"), Field(ge=0, le=MAX_RATE_PER_S, allow_inf_nan=False)]
