#!/usr/bin/env bash
# What was run on the lent GPU (from the repo root; wheels for the mmyolo stack in .whl/).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -f benchmarks/.git_sha ] && export DETBENCH_GIT_SHA=$(cat benchmarks/.git_sha)
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/nvidia-smi.csv
python3 -m harness.cli run matrices/gpu.yaml --db sqlite:///$OUT/gpu.db --cache-dir /tmp/dbc 2>&1 | tail -25
python3 -m harness.cli export latest --db sqlite:///$OUT/gpu.db --format md -o $OUT/gpu_matrix.md
python3 -m harness.cli show latest --db sqlite:///$OUT/gpu.db --json > $OUT/gpu_matrix.json
python3 benchmarks/cuda_event_overhead.py --out $OUT 2>&1 | grep -v Warning | tail -15
