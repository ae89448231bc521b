"""Typed shape of the catalogs. Every number is a `Sourced` value: no figure without a citation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Dtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


class Sourced(Strict):
    """A number and where it comes from: a URL, or 'measured: <command>', or 'derived: <how>'. Always
    finite; the fields holding one say which further physical range applies (positive(), non_negative())."""

    value: float
    source: str = Field(min_length=8)
    note: str | None = None

    @field_validator("source")
    @classmethod
    def _cited(cls, source: str) -> str:
        if not source.startswith(("http://", "https://", "measured:", "derived:", "paper:")):
            raise ValueError("source must be a URL, 'measured: <command>', 'derived: <how>' or 'paper: <where>'")
        return source


def _over(v: Sourced | None, low: float, strict: bool) -> Sourced | None:
    if v is not None and (v.value <= low if strict else v.value < low):
        raise ValueError(f"{v.value:g} is not physical: it must be {'above' if strict else 'at least'} {low:g}")
    return v


def positive(*fields: str) -> classmethod:
    """A field validator: these Sourced fields (or dicts of them) must be above 0 — a rate, a size, a power."""
    def check(cls: type, v: Sourced | dict[str, Sourced] | None) -> Sourced | dict[str, Sourced] | None:
        for one in v.values() if isinstance(v, dict) else [v]:
            _over(one, 0.0, strict=True)
        return v

    return field_validator(*fields)(classmethod(check))


def non_negative(*fields: str) -> classmethod:
    """These Sourced fields (or dicts of them) must be at least 0 — a price."""
    def check(cls: type, v: Sourced | dict[str, Sourced] | None) -> Sourced | dict[str, Sourced] | None:
        for one in v.values() if isinstance(v, dict) else [v]:
            _over(one, 0.0, strict=False)
        return v

    return field_validator(*fields)(classmethod(check))


class ScaleUp(Strict):
    """Intra-chassis fabric (NVLink, Infinity Fabric, Gaudi on-chip RoCE)."""

    link: str
    bw_gbyte_s: Sourced = Field(description="per device, one direction, GB/s")
    domain_size: Sourced = Field(description="devices in one scale-up domain")

    _positive = positive("bw_gbyte_s", "domain_size")


class ScaleOut(Strict):
    nic_gbit_s: Sourced = Field(description="per device, Gb/s")

    _positive = positive("nic_gbit_s")


class Device(Strict):
    name: str
    aliases: list[str] = []
    vendor: Literal["nvidia", "amd", "intel"]
    kind: Literal["gpu", "accelerator", "cpu"]
    generation: str
    peak_tflops: dict[Dtype, Sourced] = Field(description="dense peak per dtype; never sparse figures")
    memory_gb: Sourced
    memory_bw_gbyte_s: Sourced
    scale_up: ScaleUp | None = None
    scale_out: ScaleOut
    tdp_w: Sourced
    idle_w: Sourced | None = Field(default=None, description="draw with the engine loaded and no work; energy and "
                                   "max_kw weight power between this and TDP by utilisation")
    price_usd: Sourced = Field(description="list or street price of one device")
    cores: Sourced | None = Field(default=None, description="CPU cores, for CPU devices")

    _positive = positive("peak_tflops", "memory_gb", "memory_bw_gbyte_s", "tdp_w", "cores")
    _priced = non_negative("price_usd")

    def tflops(self, dtype: str) -> float | None:
        """Dense peak for `dtype`; fp16 and bf16 share tensor-core throughput when only one is listed."""
        for key in (dtype, {"fp16": "bf16", "bf16": "fp16"}.get(dtype, "")):
            if key in self.peak_tflops:
                return self.peak_tflops[key].value
        return None


class MlaShape(Strict):
    """Multi-head latent attention (DeepSeek): KV cache holds one compressed latent per token and layer."""

    kv_lora_rank: int
    qk_rope_head_dim: int


class ModelSpec(Strict):
    name: str
    aliases: list[str] = []
    kind: Literal["llm", "stt", "tts", "embed"]
    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    params_b: Sourced = Field(description="total parameters, billions")
    active_params_b: Sourced | None = Field(default=None, description="per-token active parameters (MoE)")
    experts: int = 0
    active_experts: int = 0
    shared_experts: int = 0
    expert_ffn: int | None = None
    dense_layers: int = Field(default=0, description="leading layers with a dense FFN in an MoE model")
    mla: MlaShape | None = None
    max_context: int
    encoder_layers: int = 0
    shape_source: str = Field(min_length=8, description="URL of the config the shape fields come from")

    _positive = positive("params_b", "active_params_b")

    @field_validator("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "max_context")
    @classmethod
    def _shape(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"{v} is not a shape: it must be at least 1")
        return v

    @property
    def active_params(self) -> float:
        return (self.active_params_b or self.params_b).value * 1e9

    @property
    def total_params(self) -> float:
        return self.params_b.value * 1e9

    @property
    def is_moe(self) -> bool:
        return self.experts > 0


class PriceProfile(Strict):
    """Named set of device prices; devices it does not list fall back to `inherit` (or the catalog price)."""

    name: str
    description: str
    inherit: str | None = None
    prices_usd: dict[str, Sourced]

    _priced = non_negative("prices_usd")


class TcoProfile(Strict):
    """Financing and power assumptions that turn a price and a TDP into dollars per device-hour."""

    name: str
    description: str
    years: float = Field(gt=0)
    interest_rate: float = Field(ge=0, lt=1)
    power_fraction_of_tdp: float = Field(gt=0, le=1.5)
    usd_per_kwh: float = Field(ge=0)
    pue: float = Field(ge=1)
    host_share: float = Field(default=0.0, ge=0, description="extra $/h per device for host, network, rack")
    price_profile: str = "list"
    source: str


FITTED_SOURCE = "fitted:"
MAX_FITTED_EFFICIENCY = 10.0


class Efficiency(Strict):
    """Fraction of peak an op kind reaches on a device class (compute, memory bandwidth, network).

    Factors fitted to a measured profile (source "fitted:<file>") may exceed 1: they then also absorb
    what the work count gets wrong on that machine (an embedding table counted as matmul weights, a
    small model's weights served from cache rather than from memory)."""

    compute: float = Field(gt=0, le=MAX_FITTED_EFFICIENCY)
    memory: float = Field(gt=0, le=MAX_FITTED_EFFICIENCY)
    network: float = Field(gt=0, le=MAX_FITTED_EFFICIENCY)
    static_latency_s: float = Field(ge=0, description="per kernel-launch-bound step, s")
    source: str

    @model_validator(mode="after")
    def _fraction_of_peak(self) -> Efficiency:
        if max(self.compute, self.memory, self.network) > 1 and not self.source.startswith(FITTED_SOURCE):
            raise ValueError("compute, memory and network are fractions of the peak (at most 1); only factors "
                             "fitted to a measured profile (source 'fitted:<file>') may exceed 1")
        return self
