#!/usr/bin/env bash
# #18 on the lent GPU: onnxruntime-gpu 1.31.1 (carried in 5 parts to /tmp/ort, as for
# run_gpu_ort.sh) + matrices/int8_gpu.yaml (fixture: ORT CUDA EP fp32 / fp16 / int8 / int8-mixed).
# Writes $OUT/int8_gpu.db, int8_gpu_log.txt, int8_gpu_nvidia-smi.csv; benchmarks/int8_gpu.py turns
# the store into benchmarks/results/int8_gpu_<card>_<date>.{json,md} afterwards (on any machine).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
WHL=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/ort/part* > $WHL
echo "$(cat .ort5/SHA256)  $WHL" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl $WHL || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -f benchmarks/.git_sha ] && export DETBENCH_GIT_SHA=$(cat benchmarks/.git_sha)
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/int8_gpu_nvidia-smi.csv
python3 -c "import torch, onnxruntime as o; print(o.__version__, o.get_available_providers(), torch.backends.cudnn.version())"
python3 -m harness.cli run matrices/int8_gpu.yaml --db sqlite:///$OUT/int8_gpu.db --cache-dir /tmp/dbc > $OUT/int8_gpu_log.txt 2>&1
grep -E "^(ok|failed|skipped)" -A3 $OUT/int8_gpu_log.txt | cut -c1-300
python3 -m harness.cli show latest --db sqlite:///$OUT/int8_gpu.db | cut -c1-250
python3 -c "import sqlite3; c=sqlite3.connect('$OUT/int8_gpu.db'); c.execute('pragma wal_checkpoint(TRUNCATE)'); c.execute('pragma journal_mode=DELETE')"
