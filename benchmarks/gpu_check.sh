#!/usr/bin/env bash
# The CUDA check (well under 5 minutes on an H100): training-step time at the paper's defaults in
# float32 and bf16, the evaluation time of a 5,000 x 25,000 problem, and the losses under float16
# and bfloat16 autocast and without host synchronisation. Runs with the machine's own python3 and
# torch (selhn from this checkout, nothing installed); extra arguments go to
# benchmarks/gpu_bench.py (e.g. --compile).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout 120 "${PYTHON:-python3}" benchmarks/loss_gpu_check.py
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout 240 "${PYTHON:-python3}" benchmarks/gpu_bench.py "$@"
