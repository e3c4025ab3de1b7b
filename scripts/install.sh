#!/usr/bin/env bash
# Install detbench with everything its CPU test suite and demo need.
# A machine that already has torch (e.g. a GPU user's CUDA build) keeps it; otherwise the CPU
# build torch==2.13.0 is installed, never a multi-GB CUDA build pulled in as a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[mmyolo,onnx,host,postgres,dashboard,tensorrt-rtx,fast-eval,ray,dev]"
# The rotated family (pyproject extra `rotated`): mmrotate 1.0.0rc1 and e2cnn, pure Python, with
# --no-deps so that no dependency resolution can move the pinned mm stack (mmrotate's `mim` extra
# pins mmcv < 2.1 and mmdet < 3.1); harness/compat/mmrotate_compat.py bridges its import checks.
"$PY" -m pip install -q --no-deps "mmrotate==1.0.0rc1" "e2cnn==0.2.3"
# The dashboard's browser test drives Debian's Chromium through Playwright (never `playwright install`).
if [ "${DETBENCH_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "install.sh: chromium could not be installed; the browser test will skip and say why (and fail in CI)" >&2
fi
