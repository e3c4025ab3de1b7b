#!/usr/bin/env bash
# Issue #12 on the lent GPU, from the repo root.  $WHEELS holds cp312 wheels of what the GPU image
# lacks: mmcv-lite mmengine mmdet mmyolo addict yapf termcolor pycocotools pydantic(+core, annotated-types,
# typing-inspection) sqlalchemy(+greenlet) alembic mako shapely terminaltables prettytable wcwidth
# setuptools<81 faster-coco-eval (its cv2, torch 2.11, numpy, scipy, matplotlib are the image's own).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
WHEELS=${WHEELS:-.whl}   # scripts/fetch_device_wheels.sh fills .whl (faster-coco-eval included)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl || exit 1
# bytecode once, in parallel (a fresh machine has none for the carried wheels: without it every
# cell's `import mmdet/mmyolo` compiles ~2,000 modules, 9-10 s of the first-cell load stage)
python3 -m compileall -q -j 0 /tmp/site harness >/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/accuracy_pass_nvidia-smi.csv
python3 -m pytest -q -rs -p no:cacheprovider tests/test_device_nms.py tests/test_stream.py tests/test_timing_boundary.py 2>&1 | tail -6 | tee $OUT/accuracy_pass_pytest.txt
python3 benchmarks/accuracy_pass.py --out $OUT "$@"
