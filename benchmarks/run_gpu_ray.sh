#!/usr/bin/env bash
# Issue 16 on the lent GPU: matrices/gpu_ray.yaml through the local executor, then through
# `--executor ray` (a local Ray instance: one GPU, 16 CPUs), then locally again (the noise between
# two local runs is the yardstick for "latency within noise"). Wheels in .whl/ (mmyolo stack,
# detbench's core deps, a slimmed ray 2.60 cp312 wheel: see benchmarks/results/ray_gpu.md).
set -uo pipefail
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
[ -f benchmarks/.git_sha ] && export DETBENCH_GIT_SHA=$(cat benchmarks/.git_sha)
OUT=${OUT:-benchmarks/results}
DB=sqlite:///$OUT/ray_gpu.db
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,power.limit --format=csv | tee $OUT/ray_gpu_nvidia-smi.csv
CPUS=$(nproc)
for how in local ray local; do
  extra=(); [ $how = ray ] && extra=(--executor ray --cpus-per-cell "$CPUS")
  start=$(date +%s)
  python3 -m harness.cli run matrices/gpu_ray.yaml --db "$DB" --cache-dir /tmp/dbc "${extra[@]}" 2>&1 \
    | grep -E "^(ok|failed|skipped)|error" | cut -c1-300
  echo "$how: $(( $(date +%s) - start )) s wall"
done
python3 benchmarks/ray_gpu_compare.py "$DB" "$OUT"
python3 -c "import sqlite3; c=sqlite3.connect('$OUT/ray_gpu.db'); c.execute('pragma wal_checkpoint(TRUNCATE)'); c.execute('pragma journal_mode=DELETE')"
