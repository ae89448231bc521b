"""bench/gpu_calibration.sh --tiny: the GPU calibration's CPU mode runs the built-in engine end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_mode_measures_the_builtin_engine_and_labels_every_point(tmp_path: Path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([str(ROOT / "bench" / "gpu_calibration.sh"), "--tiny"], capture_output=True, text=True,
                         env=env, timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_calibration.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"prefill", "decode"}
    assert all(r["engine"] == "builtin-torch-eager" and r["measured_s"] > 0 and r["predicted_s"] > 0 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["points"] == len(rows)
    assert json.loads((tmp_path / "engine_check.json").read_text())["generated_tokens"] >= 1
    # the labelled points stay out of the training data
    assert "builtin" not in (ROOT / "terrazzo/catalog/data/measurements.yaml").read_text()
