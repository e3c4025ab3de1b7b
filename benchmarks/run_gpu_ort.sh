#!/usr/bin/env bash
# Second GPU session: onnxruntime-gpu (carried in parts to /tmp/ort) + the fixture on CUDA.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
cat /tmp/ort/part* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
echo "$(cat .ort5/SHA256)  /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl /tmp/onnxruntime_gpu-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -f benchmarks/.git_sha ] && export DETBENCH_GIT_SHA=$(cat benchmarks/.git_sha)
python3 -c "import torch, onnxruntime as o; print(o.__version__, o.get_available_providers(), torch.backends.cudnn.version())"
python3 -m pytest tests/test_gpu.py -rs -q -p no:cacheprovider 2>&1 | tail -8 | tee $OUT/gpu_pytest.txt
python3 -m harness.cli run matrices/gpu_fixture.yaml --db sqlite:///$OUT/gpu_fixture.db --cache-dir /tmp/dbc 2>&1 | grep -E "^(ok|failed|skipped)" -A3 | cut -c1-300
python3 -m harness.cli export latest --db sqlite:///$OUT/gpu_fixture.db --format md -o $OUT/gpu_fixture.md
python3 -c "import sqlite3; c=sqlite3.connect('$OUT/gpu_fixture.db'); c.execute('pragma wal_checkpoint(TRUNCATE)'); c.execute('pragma journal_mode=DELETE')"
cut -c1-220 $OUT/gpu_fixture.md
