"""Graceful shutdown of the real `terrazzo serve` process: on SIGTERM it stops admitting (503, /readyz
fails), finishes the request in flight, stops its pools and exits 0. Also: start-up refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
from serve_harness import free_port  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from terrazzo.cli import app  # noqa: E402
from terrazzo.server.api_errors import ServeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "shutdown-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(f"state_dir: {tmp_path}\n")
    (tmp_path / "serve.yaml").write_text("limits: {shutdown_grace_s: 30}\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(ROOT / "tests/data/serve/slow.yaml"), "--port", str(port),
         "--config", str(tmp_path / "run.yaml"), "--serve-config", str(tmp_path / "serve.yaml"),
         "--token-env", "SHUTDOWN_TEST_TOKEN"],
        env={**os.environ, "SHUTDOWN_TEST_TOKEN": TOKEN}, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # bounded wait for readiness
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as c, \
                c.stream("POST", "/v1/agents/slow/invoke", json={"input": "sleep:2 in flight", "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: request"
            proc.send_signal(signal.SIGTERM)
            for _ in range(200):  # bounded: until the server has seen the signal
                refused = c.post("/v1/agents/slow/invoke", json={"input": "late"})
                if refused.status_code == 503:
                    break
                time.sleep(0.05)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            assert c.get("/readyz").json()["status"] == "draining"
            rest = list(lines)
        result = json.loads(rest[rest.index("event: result") + 1].removeprefix("data: "))
        assert result["ok"] and result["text"] == "sleep:2 in flight"  # finished after SIGTERM
        assert proc.wait(timeout=60) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
        assert "draining" in log and "pools stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_refuses_to_start_without_a_token_or_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = str(ROOT / "tests/data/serve/slow.yaml")
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    result = CliRunner().invoke(app, ["serve", agent, "--token-env", "NO_SUCH_TOKEN_VAR"])
    assert isinstance(result.exception, ServeError) and "NO_SUCH_TOKEN_VAR is unset" in str(result.exception)
    result = CliRunner().invoke(app, ["serve", agent, "--no-auth", "--host", "0.0.0.0"])
    assert isinstance(result.exception, ServeError) and "bind to 127.0.0.1" in str(result.exception)
    monkeypatch.setenv("SHORT_TOKEN", "abc")
    result = CliRunner().invoke(app, ["serve", agent, "--token-env", "SHORT_TOKEN"])
    assert isinstance(result.exception, ServeError) and "fewer than 16" in str(result.exception)
