#!/usr/bin/env bash
# #18 on the lent machine's 16 CPU cores (its GPU unused): matrices/int8_mixed.yaml — the fixture as
# ONNX Runtime CPU fp32 / int8 / int8-mixed, the sensitivity search and the per-group attribution —
# is ONNX Runtime CPU work that takes ~25 min on the 2-core development machine. Same matrix, same
# code; the ONNX Runtime and onnx there are the machine's own (1.30.0 / 1.23.1).
# Carry .whl (scripts/fetch_device_wheels.sh). Writes $OUT/int8_mixed.{db,json,md}, int8_mixed_log.txt.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m compileall -q -j 0 /tmp/site harness benchmarks
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -f benchmarks/.git_sha ] && export DETBENCH_GIT_SHA=$(cat benchmarks/.git_sha)
echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
python3 -c "import onnx, onnxruntime as o, torch; print('onnx', onnx.__version__, 'onnxruntime', o.__version__, 'torch', torch.__version__)"
python3 benchmarks/int8_mixed.py --db sqlite:///$OUT/int8_mixed.db --cache-dir /tmp/dbc --out $OUT/int8_mixed \
    --where "the lent machine's CPU ($(nproc) cores; its GPU unused), ONNX Runtime $(python3 -c 'import onnxruntime as o; print(o.__version__)') CPU EP" \
    > $OUT/int8_mixed_log.txt 2>&1
echo "int8_mixed.py exit $?"
tail -5 $OUT/int8_mixed_log.txt
python3 -c "import sqlite3; c=sqlite3.connect('$OUT/int8_mixed.db'); c.execute('pragma wal_checkpoint(TRUNCATE)'); c.execute('pragma journal_mode=DELETE')"
