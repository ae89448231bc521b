"""Serve settings (`--serve-config SERVE.yaml`, all optional): auth, limits, controller policy. The run
config (`--config`) stays what it is for `terrazzo run`: checkpoints, documents, tools, pool sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from terrazzo.errors import SpecError
from terrazzo.server.api_errors import ServeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class TokenSource(_Strict):
    token_env: str | None = Field(default=None, pattern=_ENV_NAME)  # read first, when set and exported
    token: str | None = None         # the token itself (keep this file private), used when the env var is unset
    token_file: str | None = None    # or a file holding it (relative to the serve config's folder)


class AuthSettings(TokenSource):
    token_env: str | None = Field(default="TERRAZZO_TOKEN", pattern=_ENV_NAME)
    disabled: bool = False           # no auth at all: refused unless the host is loopback
    # several tokens, each naming its tenant (then the single token above is not used); a tenant's sessions,
    # request ids and remembered results are its own
    tenants: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")], TokenSource] = {}


class LimitSettings(_Strict):
    max_body_bytes: int = Field(default=1 << 20, ge=1024)        # 413 beyond, enforced while reading
    max_input_chars: int = Field(default=32_768, ge=1)           # 422 beyond
    request_timeout_s: float = Field(default=120.0, gt=0)        # default per-request deadline (504 past it)
    max_request_timeout_s: float = Field(default=600.0, gt=0)    # the most a request may ask for
    max_in_flight: int = Field(default=64, ge=1)                 # per agent; 429 beyond
    max_connections: int = Field(default=1024, ge=1)             # open sockets; beyond, the idlest is closed
    max_connections_per_client: int = Field(default=256, ge=1)   # per client address, the same way
    header_timeout_s: float = Field(default=10.0, gt=0)          # a request's head must arrive within this
    read_timeout_s: float = Field(default=30.0, gt=0)            # the most a body may pause between chunks (408)
    shutdown_grace_s: float = Field(default=30.0, ge=0)          # SIGTERM: time in-flight requests get to finish
    sse_keepalive_s: float = Field(default=15.0, gt=0)           # comment line on an idle event stream

    @model_validator(mode="after")
    def _order(self) -> LimitSettings:
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self


class ControllerSettings(_Strict):
    enabled: bool = True
    advisory: bool = False           # log each decision with its reason, act on none
    interval_s: float = Field(default=2.0, gt=0)                 # how often the policy is evaluated
    window_s: float = Field(default=30.0, gt=0)                  # arrival rate and latency window
    min_window_s: float = Field(default=10.0, ge=0)              # measure this long before any decision
    band_up: float = Field(default=1.3, gt=1.0)                  # re-plan above band_up × the plan's rate
    band_down: float = Field(default=0.6, gt=0.0, lt=1.0)        # ... or below band_down × it
    dwell_s: float = Field(default=60.0, ge=0)                   # at least this long between decisions
    persist_s: float = Field(default=10.0, ge=0)                 # outside the band this long before acting
    min_rate_per_s: float = Field(default=0.05, gt=0)            # never plan for less
    verify: bool = False             # simulate each new plan at its rate (the planner's refine loop; slower)
    workload: str | None = None      # planner inputs; default: the `inputs` recorded in the plan file
    sla: str | None = None
    cluster: str | None = None
    schedule: str | None = None      # a day plan (terrazzo plan with a rate-curve workload, -o): follow its pool
    #                                  sizes by time of day instead of re-planning; advisory logs them only


class IdempotencySettings(_Strict):
    retention_s: float = Field(default=86_400.0, gt=0)           # a request id's answer is replayed this long


class ServeSettings(_Strict):
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    controller: ControllerSettings = ControllerSettings()
    base_dir: str = "."              # relative paths in the file resolve here

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in overrides.items():
        if isinstance(value, dict):
            out[key] = _merge(out.get(key) or {}, value)
        elif value is not None:
            out[key] = value
    return out


def load_settings(path: str | Path | None, **overrides: Any) -> ServeSettings:
    """Read SERVE.yaml (None: defaults) and lay `overrides` (nested dicts, None = keep) over it."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        from terrazzo.spec.source import parse_yaml
        from terrazzo.spec.spec_loader import validate

        p = Path(path)
        if not p.exists():
            raise ServeError(f"serve config '{p}' does not exist", fix="pass an existing YAML file to --serve-config")
        try:
            src = parse_yaml(p.read_text() or "{}", str(p))
        except SpecError as exc:
            raise ServeError(str(exc).split(" Fix:")[0], fix="see docs/serve.md for the serve config fields") from None
        data = dict(src.data)
        data.setdefault("base_dir", str(p.resolve().parent))
        return validate(src, ServeSettings, _merge(data, overrides))  # file:line: field: what is wrong
    data.setdefault("base_dir", str(base))
    try:
        return ServeSettings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ServeError(f"serve config {path or '<defaults>'}: {loc}: {err['msg']}",
                         fix="see docs/serve.md for the serve config fields") from None
