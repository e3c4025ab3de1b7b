#!/usr/bin/env bash
# Issue #12 on the lent GPU, from the repo root.  The mmyolo stack's wheels (cp312) are unpacked to
# /tmp/w beforehand (opencv-python-headless travelled in two parts: .dev12a/cvpart_aa + cvpart_ab).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/w/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/accuracy_pass_nvidia-smi.csv
python3 -m pytest -q -rs -p no:cacheprovider tests/test_device_nms.py tests/test_stream.py tests/test_timing_boundary.py 2>&1 | tail -6 | tee $OUT/accuracy_pass_pytest.txt
python3 benchmarks/accuracy_pass.py --out $OUT "$@"
