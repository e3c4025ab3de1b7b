#!/usr/bin/env bash
# Download every wheel benchmarks/run_gpu.sh and benchmarks/run_gpu_ort.sh install on the lent GPU
# machine (no package index there), so each committed GPU result can be reproduced from this
# repository. Pinned versions with sha256 (scripts/device_wheels*.txt; pip --require-hashes
# refuses any other bytes); Python 3.12, manylinux x86_64, --only-binary, --no-deps.
#   .whl/          the mmyolo stack + detbench's core deps + mmrotate/e2cnn for the rotated family
#                  (~17 MB: carried in one call)
#   .ort5/part0N   onnxruntime-gpu 1.31.1 (256 MB) in 5 parts below the device's 64 MiB per call,
#   .ort5/SHA256   the whole wheel's sha256, checked by run_gpu_ort.sh after `cat part*`.
#   .ort6/part0N   the same wheel in 6 parts of 42.6 MB: once the repository's own files reach
#                  ~15 MB, one .ort5 part plus the tree no longer fits a call's 64 MiB.
# Both folders are git-ignored: wheels are never committed. See benchmarks/results/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
download() {  # requirements file, destination
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" --require-hashes -r "$1" -d "$2"
}

rm -rf .whl && mkdir -p .whl
download scripts/device_wheels.txt .whl
expected=$(grep -c -- '--hash=sha256:' scripts/device_wheels.txt)
found=$(ls .whl/*.whl | wc -l)
[ "$found" -eq "$expected" ] || { echo "fetch_device_wheels: $found wheels in .whl, expected $expected" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download scripts/device_wheels_ort.txt "$tmp"
wheel=$(ls "$tmp"/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl)
rm -rf .ort5 && mkdir -p .ort5
split -n 5 -d -a 2 "$wheel" .ort5/part
sha256sum "$wheel" | cut -d' ' -f1 > .ort5/SHA256
rm -rf .ort6 && mkdir -p .ort6 && split -b 42600000 -d -a 2 "$wheel" .ort6/part && cp .ort5/SHA256 .ort6/SHA256
# the parts must rebuild the exact wheel, as run_gpu_ort.sh does on the device
[ "$(cat .ort5/part* | sha256sum | cut -d' ' -f1)" = "$(cat .ort5/SHA256)" ] \
  || { echo "fetch_device_wheels: the parts do not rebuild the wheel" >&2; exit 1; }
grep -q "$(cat .ort5/SHA256)" scripts/device_wheels_ort.txt
du -sh .whl .ort5 | sed 's/^/fetch_device_wheels: /'
ls -l .ort5 | awk 'NR>1 {printf "fetch_device_wheels: .ort5/%s %.1f MiB\n", $9, $5/1048576}'
