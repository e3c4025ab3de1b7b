"""`import harness` (and planning) must work where torch, onnxruntime and tensorrt are absent."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

BLOCK_HEAVY = """
import sys, importlib.abc
HEAVY = {'torch', 'onnxruntime', 'tensorrt', 'tensorrt_rtx_bindings', 'mmcv', 'mmdet', 'mmyolo',
         'mmengine', 'cv2', 'onnx'}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in HEAVY:
            raise ImportError(f'blocked heavy import: {name}')
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_import_harness_without_heavy_packages():
    r = run_blocked("import harness, harness.matrix, harness.cli, harness.store, harness.backends, "
                    "harness.runner.orchestrator, harness.report, harness.check.verdict\n"
                    "assert 'scipy' not in sys.modules, 'scipy must load only when a check runs'\n"
                    "print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_plan_runs_without_heavy_packages(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("models: [{name: yolov8_n, checkpoint: random}]\nbackends: [pytorch, tensorrt]\n"
                 "dataset: {synth: {images: 2}}\n")
    r = run_blocked(f"import sys; sys.argv=['detbench','plan',{str(m)!r}]\n"
                    "from harness.cli import main; sys.exit(main())")
    assert r.returncode == 0, r.stderr
    assert "yolov8_n" in r.stdout
