"""The Ray backend joining an existing cluster by address: a head node started here with `ray start
--head --block` (its own temp dir, an auth token made for this test, a `tz/epyc-9654` resource), the
runtime given `ray_address`, the head stopped after by signalling the process this test started."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray._private.authentication_test_utils import reset_auth_token_state  # noqa: E402

from terrazzo.runtime.config import RunConfig  # noqa: E402
from terrazzo.runtime.orchestrator import Runtime  # noqa: E402
from terrazzo.runtime.pool_layout import load_plan  # noqa: E402
from terrazzo.spec.spec_loader import agent_from_text  # noqa: E402

RAY = Path(sys.executable).parent / "ray"  # the `ray` command installed with this interpreter's ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = RAY if RAY.exists() else shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the `ray` command is not installed next to the ray package, so no head node can be started")
    port, temp = _free_port(), tempfile.mkdtemp(prefix="tzray", dir="/tmp")  # short: Ray's socket paths are long
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # this process joins with the same token
    reset_auth_token_state()  # Ray caches the auth mode and token it read at import
    log = Path(temp) / "head.log"
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", '--resources={"tz/epyc-9654": 4}', f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    try:
        for _ in range(600):  # bounded wait for "Ray runtime started"
            if "Ray runtime started" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is not None or "Ray runtime started" not in log.read_text():
            pytest.skip(f"`ray start --head` could not run here: {log.read_text()[-400:]}")
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.terminate()  # --block tears down the head's own processes on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, by its id
            proc.wait(timeout=10)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        reset_auth_token_state()
        shutil.rmtree(temp, ignore_errors=True)


def test_joins_an_existing_cluster_by_address(cluster: str, tmp_path: Path) -> None:
    agent = agent_from_text("name: c\nnodes:\n  - {id: a, kind: compute, cpu_s: 1 ms}\n"
                            "  - {id: b, kind: tool, protocol: python, function: 'drills:echo'}\n"
                            "edges:\n  - {from: a, to: b}\n")
    plan = tmp_path / "p.json"
    place = {"device": "epyc-9654", "tp": 1, "pp": 1, "batch": 1, "replicas": 2, "pool": "cpu"}
    plan.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "a": place, "b.lookup": place, "b.compute": place}}))
    config = RunConfig(state_dir=str(tmp_path), ray_address=cluster)

    async def go():
        async with Runtime(agent, load_plan(plan), config, "ray") as rt:
            held = ray.available_resources().get("tz/epyc-9654", 0)
            results = await asyncio.gather(*(rt.run(f"q{i}") for i in range(4)))
            return results, held, ray.get_runtime_context().gcs_address

    results, held, address = asyncio.run(go())
    assert address.endswith(cluster.rpartition(":")[2])  # the head started above, not a fresh local Ray
    assert held == 2  # two actors, one tz/epyc-9654 unit each, out of the head's 4
    for i, r in enumerate(results):
        assert r.ok, r.error
        assert r.output["tool_results"] == [f"b: echo: q{i}"]
        assert [s.op for s in r.samples] == ["a", "b.lookup", "b.compute"]  # fused: one actor call per request
        assert len({s.worker for s in r.samples}) == 1
