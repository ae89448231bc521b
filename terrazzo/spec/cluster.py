"""The hardware one may use: device types (unconstrained) or an inventory, the fabric, and the TCO profile."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from terrazzo.limits import MAX_DEVICES
from terrazzo.spec.distributions import GbitPerS, Seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf or .nan anywhere


class Fabric(Strict):
    """Scale-up domains (NVLink-class, at most `scale_up_domain` devices) joined by a scale-out network."""

    scale_up_domain: int | None = Field(default=None, ge=1, le=72, description="override the devices' own")
    scale_out_gbit_s: GbitPerS = 400.0
    scale_out_latency_s: Seconds = 5e-6
    scale_up_latency_s: Seconds = 1e-6


class Cluster(Strict):
    """`devices` lists types with no count limit; `inventory` caps counts; `buy` may be added to an inventory."""

    name: str = "cluster"
    mode: Literal["unconstrained", "inventory", "own-and-buy"] = "unconstrained"
    devices: list[str] = Field(default_factory=list)
    inventory: dict[str, Annotated[int, Field(le=MAX_DEVICES)]] = Field(default_factory=dict)
    buy: list[str] = Field(default_factory=list, description="device types that may be added (own-and-buy)")
    fabric: Fabric = Fabric()
    tco_profile: str = "paper-2507.19635"
    price_profile: str | None = Field(default=None, description="override the TCO profile's price profile")
    catalogs: list[str] = Field(default_factory=list, description="extra catalog YAML files (relative to this file)")
    max_kw: float | None = Field(default=None, gt=0, description="power limit: device draw, utilisation-weighted, kW")
    max_devices: int | None = Field(default=None, gt=0, description="rack limit: devices of all types together")
    split: bool | None = Field(default=None, description="may an LLM op's demand be split across pools (device "
                               "types)? default: only when an inventory binds; false keeps each op on one pool")

    @field_validator("devices", "buy", mode="before")
    @classmethod
    def _names(cls, value: object, info: object) -> object:
        """A list of device type names; counts belong in `inventory` (the commonest mistake)."""
        field = getattr(info, "field_name", "devices")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PydanticCustomError(
                "cluster_format",
                f"'{field}' is a list of device type names, e.g. {field}: [a100, l40s]; device counts go in "
                "'inventory' (mode: inventory or own-and-buy), e.g. inventory: {a100: 16, l40s: 8}")
        return value

    @field_validator("inventory", mode="before")
    @classmethod
    def _counts(cls, value: object) -> object:
        if isinstance(value, list) and all(isinstance(v, dict) and len(v) == 1 for v in value):
            value = {k: n for v in value for k, n in v.items()}  # [{a100: 16}, {l40s: 8}] reads as a mapping
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(n, int) and not isinstance(
                n, bool) for k, n in value.items()):
            raise PydanticCustomError(
                "cluster_format",
                "'inventory' maps device type to a whole count, e.g. inventory: {a100: 16, l40s: 8}; "
                "device types without a count limit go in 'devices' (mode: unconstrained)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        if any(n < 0 for n in self.inventory.values()):
            raise ValueError("inventory counts must be zero or more")
        if self.mode == "unconstrained":
            if self.inventory:
                raise ValueError("'inventory' needs mode: inventory (use only these devices) or mode: own-and-buy "
                                 "with buy: [h200] (devices that may be added); see docs/clusters.md")
            if not self.devices:
                raise ValueError("an unconstrained cluster needs 'devices', a list of device types, e.g. "
                                 "devices: [h100, mi300x, epyc-9654]; for counts use mode: inventory")
        else:
            if not self.inventory:
                raise ValueError(f"mode {self.mode} needs 'inventory' (device type: count), e.g. "
                                 "inventory: {a100: 16, l40s: 8}")
            if self.mode == "own-and-buy" and not self.buy:
                raise ValueError("mode own-and-buy needs 'buy', the device types that may be added, e.g. buy: [h200]")
            if self.devices:
                raise ValueError(f"mode {self.mode} takes its device types from 'inventory' (and 'buy'); remove "
                                 "'devices'")
        return self

    @property
    def device_types(self) -> list[str]:
        return list(dict.fromkeys([*self.devices, *self.inventory, *self.buy]))
