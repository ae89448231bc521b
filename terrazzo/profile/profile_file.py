"""The profile file: what `terrazzo profile` measured on one machine, and the roofline fitted to it.

One YAML document per machine (and engine settings). Points keep the median and the spread of their
repeats; `fit` holds the factors the catalog layers over its defaults. Everything is plain data so a
profile can be read, diffed and checked without the machine it came from.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from terrazzo.catalog.catalog_schema import MAX_FITTED_EFFICIENCY
from terrazzo.errors import ProfileError, SpecError
from terrazzo.spec.source import read_yaml

PROFILE_SCHEMA: Final = "terrazzo.profile/v1"
OpKind = Literal["prefill", "decode", "embed", "ann_search"]
LinkKind = Literal["pipe", "shm", "h2d", "d2h"]
FIX = "re-run `terrazzo profile -o FILE`, or correct the field (layout: terrazzo/profile/profile_file.py)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Timing(Strict):
    """Wall-clock times of one point's repeats: the median is what is used, p10–p90 is its spread."""

    median_s: float = Field(gt=0)
    p10_s: float = Field(gt=0)
    p90_s: float = Field(gt=0)
    repeats: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Timing:
        if not self.p10_s <= self.median_s <= self.p90_s:
            raise ValueError("needs p10_s <= median_s <= p90_s")
        return self

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative width of the middle 80 % of the repeats."""
        return (self.p90_s - self.p10_s) / self.median_s


class Machine(Strict):
    """Who measured: enough to tell two machines apart without naming the host."""

    hostname_sha256: str = Field(pattern=r"^[0-9a-f]{12}$", description="first 12 hex digits")
    os: str
    python: str
    cpu_model: str
    cpu_vendor: Literal["amd", "intel", "other"]
    logical_cores: int = Field(ge=1)
    torch: str
    torch_threads: int = Field(ge=1)
    gpu: str | None = None
    cuda: str | None = None

    @property
    def identity(self) -> str:
        return self.gpu or self.cpu_model


class Settings(Strict):
    device: Literal["cpu", "cuda"]
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    threads: int = Field(ge=1)
    interleaved: bool = True
    seed: int = 0


class DeviceSection(Strict):
    """The catalog device the profile is about. `defines: true` adds it (this machine, peaks measured);
    `defines: false` calibrates the catalog's entry of that name, if the machine is that device."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    defines: bool
    kind: Literal["cpu", "gpu"]
    vendor: Literal["nvidia", "amd", "intel"]
    generation: str
    fp32_tflops: float = Field(gt=0, description="measured: fp32 matrix multiply")
    memory_bw_gbyte_s: float = Field(gt=0, description="measured: large tensor copy, read + write bytes")
    memory_gb: float = Field(gt=0)
    cores: int = Field(ge=1, description="threads the engine ran with")
    base: str | None = Field(default=None, description="catalog device whose price, TDP and NIC it takes a share of")
    share: float = Field(default=1.0, gt=0, le=1, description="that share: cores / base cores")


class ModelShape(Strict):
    """A transformer's shape as measured, read from its config.json: what layering matches catalog models on."""

    name: str
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    heads: int = Field(ge=1)
    ffn: int = Field(ge=1)
    vocab: int = Field(ge=1)
    params: int = Field(ge=1)
    max_context: int = Field(ge=1)


class LlmShape(ModelShape):
    """The checkpoint prefill and decode ran on."""

    dtype: Literal["fp32", "bf16", "fp16"]  # no default: the engine ran in one
    checkpoint: str
    random_weights: bool
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)


class EncoderShape(ModelShape):
    """The embedding model (a sentence-transformers folder)."""

    path: str


class PrefillPoint(Strict):
    isl: int = Field(ge=1)
    batch: int = Field(default=1, ge=1)
    timing: Timing


class ReusePrefillPoint(Strict):
    """Prefill of `new` tokens behind `cached` tokens the engine found in its prefix cache (one request)."""

    new: int = Field(ge=1)
    cached: int = Field(ge=1)
    batch: int = Field(default=1, ge=1)
    timing: Timing


class DecodePoint(Strict):
    batch: int = Field(ge=1)
    context: int = Field(ge=1)
    timing: Timing


class EmbedPoint(Strict):
    texts: int = Field(ge=1)
    tokens_per_text: int = Field(ge=1)
    timing: Timing


class AnnPoint(Strict):
    vectors: int = Field(ge=1)
    dimension: int = Field(ge=1)
    k: int = Field(ge=1)
    queries: int = Field(default=1, ge=1)
    index: Literal["flat"] = "flat"
    timing: Timing


class TransferPoint(Strict):
    link: LinkKind
    bytes: int = Field(ge=1)
    timing: Timing


class Points(Strict):
    prefill: list[PrefillPoint] = []
    decode: list[DecodePoint] = []
    reuse_prefill: list[ReusePrefillPoint] = []
    embed: list[EmbedPoint] = []
    ann: list[AnnPoint] = []
    transfer: list[TransferPoint] = []


class OpFit(Strict):
    """Roofline factors of one op kind: t = max(F/(peak·compute), B/(bw·memory)) + static_latency_s."""

    compute: float = Field(gt=0, le=MAX_FITTED_EFFICIENCY)
    memory: float = Field(gt=0, le=MAX_FITTED_EFFICIENCY)
    static_latency_s: float = Field(ge=0)
    fitted: list[Literal["compute", "memory", "static"]] = Field(
        description="factors the points determine; the others keep the catalog default (never binding)")
    points: int = Field(ge=1)
    mape_pct: float = Field(ge=0, description="mean absolute % error of the fit at its own points")


class LinkFit(Strict):
    """α–β model of one transfer path: t = alpha_s + bytes / (bw_gbyte_s · 1e9)."""

    alpha_s: float = Field(ge=0)
    bw_gbyte_s: float = Field(gt=0)
    points: int = Field(ge=1)
    mape_pct: float = Field(ge=0)


class Fit(Strict):
    ops: dict[OpKind, OpFit] = {}
    links: dict[LinkKind, LinkFit] = {}


class FrontEndRunRecord(Strict):
    concurrency: int = Field(ge=1)
    requests: int = Field(ge=1)
    prompt_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(ge=1)
    engine_steps: int = Field(ge=0)
    server_cpu_s: float = Field(ge=0)
    client_cpu_s: float = Field(ge=0)
    wall_s: float = Field(gt=0)


class FrontEndSection(Strict):
    """CPU an engine's API server spends per request, per engine step it streams and per token, and the
    load generator's beside it (the simulator's front-end stage, terrazzo/sim/front_end.py)."""

    request_cpu_ms: float = Field(ge=0)
    prompt_token_cpu_ms: float = Field(default=0.0, ge=0)
    step_cpu_ms: float = Field(ge=0)
    token_cpu_ms: float = Field(ge=0)
    client_request_cpu_ms: float = Field(ge=0)
    client_token_cpu_ms: float = Field(ge=0)
    client_prompt_token_cpu_ms: float = Field(default=0.0, ge=0, description="the client's CPU per prompt token "
                                              "(it sends token ids); 0 in profiles made before it was fitted")
    latency_ms: float = Field(ge=0, description="a lone request's front-end latency that is not this CPU")
    source: str = "measured:vllm-profile"
    method: str = ""
    runs: list[FrontEndRunRecord] = []


class Profile(Strict):
    schema_: Literal["terrazzo.profile/v1"] = Field(alias="schema")
    created: str
    command: str
    machine: Machine
    settings: Settings
    device: DeviceSection
    llm: LlmShape | None = None
    embed: EncoderShape | None = None
    points: Points
    fit: Fit
    notes: list[str] = []
    engine: str = Field(default="builtin", description="the engine prefill and decode ran on, with its version "
                                                         "(builtin, vllm-0.32.0)")
    engine_settings: dict[str, float] | None = Field(
        default=None, description="the engine's scheduler settings while measured (max_num_seqs, "
                                  "max_batched_tokens, block_size, kv_blocks: a plan's scheduler fields) and "
                                  "frontend_ms, a request's latency outside the engine (HTTP, API server)")
    front_end: FrontEndSection | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False, width=110)


def write_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(profile.to_yaml(), encoding="utf-8")


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; any problem names the file, line and field, and how to fix it."""
    try:
        src = read_yaml(path)
    except SpecError as exc:
        raise ProfileError(exc.message, file=exc.file, line=exc.line, fix=exc.fix) from None
    if src.data.get("schema") != PROFILE_SCHEMA:
        raise ProfileError(f"not a terrazzo profile (schema is {src.data.get('schema')!r}, expected "
                           f"{PROFILE_SCHEMA!r})", file=src.file, line=src.line_of(("schema",)), field="schema",
                           fix="pass a file written by `terrazzo profile -o FILE`")
    try:
        return Profile.model_validate(src.data)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelt key says more
        loc: tuple[Any, ...] = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == loc[:-1]]
            close = difflib.get_close_matches(str(loc[-1]), missing, n=1)
            message = f"unknown field '{loc[-1]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif err["type"] == "missing":
            message = "required field is missing"
        dotted = ".".join(str(p) for p in loc)
        raise ProfileError(message, file=src.file, line=src.line_of(loc), field=dotted, fix=FIX) from None
