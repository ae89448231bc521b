"""The hardware one may use: device types (unconstrained) or an inventory, the fabric, and the TCO profile."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from terrazzo.spec.distributions import GbitPerS, Seconds
from terrazzo.spec.limits import MAX_DEVICES


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

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        if any(n < 0 for n in self.inventory.values()):
            raise ValueError("inventory counts must be zero or more")
        if self.mode == "unconstrained":
            if not self.devices:
                raise ValueError("an unconstrained cluster needs 'devices' (a list of device types)")
            if self.inventory:
                raise ValueError("'inventory' needs mode: inventory or own-and-buy")
        else:
            if not self.inventory:
                raise ValueError(f"mode {self.mode} needs 'inventory' (device type: count)")
            if self.mode == "own-and-buy" and not self.buy:
                raise ValueError("mode own-and-buy needs 'buy' (device types that may be added)")
        return self

    @property
    def device_types(self) -> list[str]:
        return list(dict.fromkeys([*self.devices, *self.inventory, *self.buy]))
