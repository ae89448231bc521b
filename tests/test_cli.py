"""The CLI as a user runs it: a real subprocess, its output and its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", *args], capture_output=True, text=True, cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, timeout=120,
    )


def test_cost_json_for_the_issue_example():
    out = run("cost", "llama-3-70b", "--device", "h100", "--dtype", "fp8", "--isl", "4096", "--osl", "512",
              "--tp", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["device"] == "h100-sxm" and report["tp"] == 2
    assert report["ttft_bound"] == "compute"
    assert report["tbt_b1_bound"] in ("memory", "network")
    assert 0 < report["tbt_b1_s"] < report["sla_tbt_s"]
    assert report["max_sla_batch"] >= 1
    assert report["tbt_at_max_batch_s"] <= 0.02
    assert report["usd_per_m_output_tokens"] > 0


def test_cost_table_names_the_bound():
    out = run("cost", "llama-3-8b", "--device", "a100", "--isl", "512", "--osl", "4096")
    assert out.returncode == 0, out.stderr
    assert "memory-bound" in out.stdout and "TTFT" in out.stdout


def test_unknown_device_is_a_clear_error_not_a_traceback():
    out = run("cost", "llama-3-70b", "--device", "h10")
    assert out.returncode == 2
    assert "unknown device 'h10'" in out.stderr and "did you mean" in out.stderr
    assert "Traceback" not in out.stderr


def test_hw_list_and_show_cite_sources():
    listing = run("hw", "list")
    assert listing.returncode == 0 and "gaudi3" in listing.stdout and "b200" in listing.stdout
    shown = run("hw", "show", "mi300x")
    assert shown.returncode == 0 and "http" in shown.stdout and "memory_bw_gbyte_s" in shown.stdout


def test_hw_validate_accepts_good_and_rejects_bad(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text(
        "devices:\n  my-gpu:\n    vendor: nvidia\n    kind: gpu\n    generation: test\n"
        "    peak_tflops: {bf16: {value: 100, source: 'measured: my bench'}}\n"
        "    memory_gb: {value: 24, source: 'https://example.com/spec'}\n"
        "    memory_bw_gbyte_s: {value: 900, source: 'https://example.com/spec'}\n"
        "    scale_out: {nic_gbit_s: {value: 100, source: 'https://example.com/spec'}}\n"
        "    tdp_w: {value: 300, source: 'https://example.com/spec'}\n"
        "    price_usd: {value: 5000, source: 'https://example.com/quote'}\n"
    )
    ok = run("hw", "validate", str(good))
    assert ok.returncode == 0 and "devices.my-gpu" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("source: 'https://example.com/quote'", "source: 'my guess'"))
    rejected = run("hw", "validate", str(bad))
    assert rejected.returncode == 2
    assert "bad.yaml:11" in rejected.stderr and "price_usd.source" in rejected.stderr


def test_models_list_and_worked_example():
    models = run("models", "list")
    assert models.returncode == 0 and "MLA" in models.stdout and "deepseek-v3" in models.stdout
    worked = run("worked-example")
    assert worked.returncode == 0
    assert "agrees with the published choice" in worked.stdout
