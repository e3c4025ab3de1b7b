"""The shipped fixture measured through detbench: real AP, and ONNX Runtime parity with PyTorch."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, has_module, run_cli

pytestmark = pytest.mark.skipif(not (has_module("mmyolo") and has_module("onnxruntime")),
                                reason="needs the mmyolo stack and onnxruntime (extras mmyolo, onnx)")

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def matrix(backends, precisions, method="minmax", batch=4):
    return f"""
name: fixture-{method}
models:
  - name: yolov8_synth
    config: {FIXTURE / 'config.py'}
    checkpoint: {FIXTURE / 'yolov8_synth.pth'}
backends: {backends}
precisions: {precisions}
batch_sizes: [{batch}]
image_sizes: [320]
exclude: [{{backend: pytorch, precision: fp16}}, {{backend: pytorch, precision: int8}}]
dataset: {{synth: {{images: 100, seed: 2, size: 320}}}}
calibration: {{images: 16, method: {method}, seed: 3}}
timing: {{warmup: 1, iterations: 3, e2e: false}}
"""


def run_matrix(tmp: Path, text: str):
    from harness.store import Store

    (tmp / "m.yaml").write_text(text)
    r = run_cli("run", "m.yaml", "--cache-dir", tmp.parent / "cache", cwd=tmp)
    store = Store(f"sqlite:///{tmp}/results.db", readonly=True)
    cells = {(c.backend, c.precision): c for c in store.cells(store.get_run("latest").id)}
    for c in list(cells.values()):
        assert c.status == "ok", (c.key, c.stage, c.error, c.log_tail)
    assert r.returncode == 0, r.stderr
    cells["store"] = store
    return cells


@pytest.fixture(scope="module")
def main_cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fixture") / "main"
    tmp.mkdir()
    return run_matrix(tmp, matrix("[pytorch, onnxruntime]", "[fp32, fp16, int8]"))


def test_fixture_ap_is_real(main_cells):
    ref = main_cells[("pytorch", "fp32")]
    assert ref.metrics["AP"] >= 0.50, ref.metrics  # computed now, on the fixed validation split
    per_class = main_cells["store"].class_ap(ref.id)
    assert [c["class_name"] for c in per_class] == ["circle", "square", "triangle"]
    assert all(c["ap"] > 0.2 for c in per_class), per_class


def test_onnxruntime_fp32_matches_pytorch_ap(main_cells):
    ref, ort = main_cells[("pytorch", "fp32")], main_cells[("onnxruntime", "fp32")]
    assert abs(ort.metrics["AP"] - ref.metrics["AP"]) <= 0.002, (ort.metrics["AP"], ref.metrics["AP"])
    assert ort.provenance["providers"][0] == "CPUExecutionProvider"
    assert ort.provenance["onnx_sha256"]


def test_fp16_and_int8_run_and_report_ap(main_cells):
    ref = main_cells[("pytorch", "fp32")].metrics["AP"]
    fp16, int8 = main_cells[("onnxruntime", "fp16")], main_cells[("onnxruntime", "int8")]
    assert abs(fp16.metrics["AP"] - ref) <= 0.01, fp16.metrics["AP"]
    assert 0.5 * ref <= int8.metrics["AP"] <= ref + 0.02, int8.metrics["AP"]
    assert fp16.provenance["io_dtype"].startswith("float32")
    assert int8.provenance["calibration_method"] == "minmax"
    assert int8.provenance["calibration_cache_sha256"]


@pytest.mark.slow  # two more int8 cells (~25-75 s each on 2 cores); minmax is in the default suite
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_run_and_change_scales(tmp_path, main_cells, method):
    cells = run_matrix(tmp_path, matrix("[onnxruntime]", "[int8]", method))
    cell = cells[("onnxruntime", "int8")]
    minmax = main_cells[("onnxruntime", "int8")]
    assert cell.provenance["calibration_method"] == method
    assert cell.metrics["AP"] > 0.3
    assert cell.provenance["scales_sha256"] != minmax.provenance["scales_sha256"]
