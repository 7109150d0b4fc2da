#!/usr/bin/env bash
# The CUDA check (well under 5 minutes on an H100): training-step time at the paper's defaults in
# float32 and bf16, and the evaluation time of a 5,000 x 25,000 problem. Runs with the machine's
# own python3 and torch (selhn from this checkout, nothing installed); extra arguments go to
# benchmarks/gpu_bench.py (e.g. --compile).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout 290 "${PYTHON:-python3}" benchmarks/gpu_bench.py "$@"
