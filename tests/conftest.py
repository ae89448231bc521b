"""Shared fixtures: the shipped catalog and the example spec files. Puts tests/ on every child process's path,
so worker processes and Ray actors can import the drill tools (`drills:fn`) the tests name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from terrazzo.catalog.catalog_loader import Catalog, load_catalog

pytest_plugins = ["vllm_live"]  # the session's one live vLLM server (tests/vllm_live.py)

SPECS = Path(__file__).parent / "data" / "specs"
TESTS = str(Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def specs() -> Path:
    return SPECS


@pytest.fixture(scope="module")
def vllm_tiny_server(tmp_path_factory):
    """One live vLLM CPU server for a test module (stopped after it, so a later test may start its own), on
    a tiny random-weight Llama (4 layers × 256), holding /tmp/vllm.lock (or $TERRAZZO_VLLM_LOCK) while it
    runs; its log goes to a file. Skips where vLLM's environment is absent."""
    from terrazzo.profile.vllm_server import ENV_PYTHON, VllmServer, VllmSettings, vllm_python
    from terrazzo.runtime.engines.vllm_server import EngineLock

    if vllm_python() is None:
        pytest.skip(f"live vLLM tests need .venv-vllm (vLLM's own environment) or ${ENV_PYTHON} naming its python")
    from terrazzo.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    checkpoint = Path(make_tiny_checkpoint(root / "tiny", hidden=256, layers=4, heads=8, kv_heads=4))
    settings = VllmSettings(max_num_seqs=16, max_num_batched_tokens=1024, block_size=128, kv_cache_gib=1.0,
                            extra=["-O0"])  # eager: no torch.compile at start-up (minutes on two cores)
    EngineLock.acquire(os.environ.get("TERRAZZO_VLLM_LOCK", "/tmp/vllm.lock"))  # one engineer's engines at a time
    try:
        with VllmServer(checkpoint, settings, root / "vllm.log") as server:
            server.checkpoint = checkpoint  # type: ignore[attr-defined]
            yield server
    finally:
        EngineLock.release()
