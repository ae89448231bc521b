"""A live vLLM OpenAI-compatible server for profiling and the sim-to-real benchmark: the runtime's own
launcher (`runtime/engines/vllm_server.py`) with the scheduler flags a profile records, as a context
manager that also reads the KV capacity vLLM logged.

With $TERRAZZO_VLLM_LOCK set (the machine's engineers share two cores), the server holds an exclusive
`flock` on that file for its whole life, as the runtime's replicas do; unset, nothing is locked. The
server runs without prefix caching, so each profiled prefill is a cold one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from terrazzo.errors import ProfileError
from terrazzo.runtime.engines.vllm_server import LOCK_ENV, EngineLock, VllmProcess, VllmServerSpec
from terrazzo.runtime.engines.vllm_server import PYTHON_ENV as ENV_PYTHON
from terrazzo.runtime.engines.vllm_server import vllm_python as engine_python
from terrazzo.runtime.failures import ExecutionError


def vllm_python(explicit: str | Path | None = None) -> Path | None:
    """vLLM's interpreter: `explicit` (--vllm-python), else the runtime's ($TERRAZZO_VLLM_PYTHON, .venv-vllm)."""
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    return engine_python()


@dataclass
class VllmSettings:
    """The engine flags a pool runs with: they are what the plan records and the simulator reads."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048  # vLLM's CPU default for the API server (vllm/engine/arg_utils.py)
    block_size: int = 128  # vLLM's CPU default (vllm/platforms/cpu.py)
    kv_cache_gib: float = 1.0
    max_model_len: int = 2048
    omp_threads: int | None = None  # CPU threads of the server (None: vLLM's default, every core)
    extra: list[str] = field(default_factory=list)

    def scheduler_args(self) -> list[str]:
        """The flags beyond a pool's VllmServerSpec: the scheduler's token budget and KV block size."""
        return ["--max-num-batched-tokens", str(self.max_num_batched_tokens), "--block-size", str(self.block_size),
                *self.extra]


class VllmServer:
    """`with VllmServer(model_dir, settings, log) as srv:` srv.base_url, srv.version, srv.kv_blocks."""

    def __init__(self, model: str | Path, settings: VllmSettings, log: str | Path, python: str | Path | None = None,
                 start_timeout_s: float = 600.0, lock_timeout_s: float = 3600.0) -> None:
        py = vllm_python(python)
        if py is None:
            raise ProfileError("no vLLM interpreter found", field="--vllm-python",
                               fix=f"install vLLM into .venv-vllm, or set ${ENV_PYTHON} / --vllm-python to its python")
        self.python, self.model, self.settings, self.log = py, Path(model), settings, Path(log)
        self.start_timeout_s, self.lock_timeout_s = start_timeout_s, lock_timeout_s
        spec = VllmServerSpec(model=str(model), served_name=str(model), max_num_seqs=settings.max_num_seqs,
                              max_model_len=settings.max_model_len, prefix_caching=False, dtype="float32",
                              kv_cache_gib=max(1, math.ceil(settings.kv_cache_gib)),
                              extra_args=tuple(settings.scheduler_args()), omp_threads=settings.omp_threads)
        self.process = VllmProcess(spec, py, self.log)
        self._locked = False
        self.kv_tokens = 0
        self.startup_s = 0.0

    @property
    def base_url(self) -> str:
        return self.process.url

    @property
    def version(self) -> str:
        return self.process.version

    @property
    def kv_blocks(self) -> int:
        return self.kv_tokens // self.settings.block_size

    def __enter__(self) -> VllmServer:
        self._take_lock()
        try:
            self.process.launch().wait_ready(self.start_timeout_s)
        except ExecutionError as exc:
            self.__exit__(None, None, None)
            raise ProfileError(f"the vLLM server did not start: {exc}", file=str(self.log),
                               fix="read the log for vLLM's error; a loaded machine may need longer") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.startup_s = self.process.ready_s or 0.0
        if m := re.findall(r"KV cache size: ([0-9,]+) tokens", self.log.read_text(errors="replace")):
            self.kv_tokens = int(m[-1].replace(",", ""))
        return self

    def _take_lock(self) -> None:
        try:
            self._locked = EngineLock.acquire(timeout_s=self.lock_timeout_s)
        except TimeoutError as exc:
            raise ProfileError(str(exc), fix=f"wait for the other engine to finish, or unset {LOCK_ENV}") from None

    def __exit__(self, *exc: object) -> None:
        self.process.stop(grace_s=30)
        if self._locked:
            EngineLock.release()
            self._locked = False
