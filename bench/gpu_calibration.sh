#!/usr/bin/env bash
# Built-in engine vs cost model on one GPU (≤ 5 minutes on an H200); results under $OUT as they come.
#   bench/gpu_calibration.sh            GPU run: Llama-3-8B shape and an 8-layer Llama-3-70B slice
#   bench/gpu_calibration.sh --tiny     CPU run on a tiny random checkpoint (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="${PYTHONPATH:-.}"
exec timeout 300 "$PY" bench/gpu_calibration.py --out "${OUT:-gpu_calibration_out}" "$@"
