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
"$PY" -m pip install -q -e ".[mmyolo,onnx,dashboard,tensorrt-rtx,dev]"
