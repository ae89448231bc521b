"""A live vLLM OpenAI-compatible server on this machine, for profiling and the sim-to-real benchmark.

A small launcher of our own (the runtime's vLLM pool launcher is another branch's work, not yet
available here): start `python -m vllm.entrypoints.openai.api_server` from vLLM's own virtual
environment with the scheduler settings the plan names, wait for /health, hand out its URL, stop it.

Only one engineer's server may run on the shared 2-core machine at a time, or the measurements mean
nothing: the server holds an exclusive `flock` on /tmp/vllm.lock for its whole life. Its logs go to
a file. The server runs without prefix caching, which the simulator does not model.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from terrazzo.errors import ProfileError

LOCK = Path("/tmp/vllm.lock")
ENV_PYTHON = "TERRAZZO_VLLM_PYTHON"


def vllm_python(explicit: str | Path | None = None) -> Path | None:
    """vLLM's interpreter: `explicit`, else $TERRAZZO_VLLM_PYTHON, else .venv-vllm in the repository."""
    for cand in (explicit, os.environ.get(ENV_PYTHON), Path(__file__).resolve().parents[2] / ".venv-vllm/bin/python"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmSettings:
    """The engine flags a pool runs with: they are what the plan records and the simulator reads."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048  # vLLM's CPU default for the API server (vllm/engine/arg_utils.py)
    block_size: int = 128  # vLLM's CPU default (vllm/platforms/cpu.py)
    kv_cache_gib: float = 1.0
    max_model_len: int = 2048
    extra: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        return ["--max-num-seqs", str(self.max_num_seqs), "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                "--block-size", str(self.block_size), "--max-model-len", str(self.max_model_len),
                "--no-enable-prefix-caching", "--dtype", "float32", *self.extra]


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
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[Any] | None = None
        self._log: IO[Any] | None = None
        self.version = ""
        self.kv_tokens = 0
        self.startup_s = 0.0

    @property
    def kv_blocks(self) -> int:
        return self.kv_tokens // self.settings.block_size

    def __enter__(self) -> VllmServer:
        self._take_lock()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("ab")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": f"{self.settings.kv_cache_gib:g}",
               "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "INFO")}
        env.pop("PYTHONPATH", None)  # vLLM's own environment, not terrazzo's
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port), *self.settings.args()]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.startup_s = time.monotonic() - t0
        self._read_log()
        return self

    def _take_lock(self) -> None:
        self._lock = LOCK.open("a")
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProfileError(f"another vLLM server holds {LOCK} for over {self.lock_timeout_s:g} s",
                                       fix="wait for it to finish, then run again") from None
                time.sleep(2.0)

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProfileError(f"the vLLM server exited with code {self.proc.returncode} while starting",
                                   file=str(self.log), fix="read the log for vLLM's error")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(1.0)
        raise ProfileError(f"the vLLM server was not ready within {self.start_timeout_s:g} s", file=str(self.log),
                           fix="read the log; a loaded machine may need a longer start-up")

    def _read_log(self) -> None:
        text = self.log.read_text(errors="replace")
        if m := re.findall(r"V1 LLM engine \(v([0-9][^)]*)\)", text):
            self.version = m[-1]
        if m := re.findall(r"KV cache size: ([0-9,]+) tokens", text):
            self.kv_tokens = int(m[-1].replace(",", ""))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
