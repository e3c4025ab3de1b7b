"""Ultralytics models through Ultralytics' own exporter (an optional extra, in its own environment).

Ultralytics needs torchvision, which does not import beside the CPU torch 2.13 that detbench's
install uses, so the exporter runs in the interpreter named by ``ultralytics.python`` /
DETBENCH_ULTRALYTICS_PYTHON (e.g. a venv with torch 2.14.1 + torchvision 0.29.1 + ultralytics).
The real export test needs that environment; the absence path is tested everywhere.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import has_module, run_cli

pytestmark = pytest.mark.skipif(not (has_module("onnx") and has_module("onnxruntime")),
                                reason="needs onnx and onnxruntime (extra onnx)")
UL_PYTHON = os.environ.get("DETBENCH_ULTRALYTICS_PYTHON")


def _has_ultralytics(python) -> bool:
    if not python:
        return False
    r = subprocess.run([python, "-c", "import ultralytics"], capture_output=True)
    return r.returncode == 0


def _matrix(tmp_path, ultra: dict, **extra):
    import yaml

    doc = {"name": "ul", "models": [{"name": "yolo", "ultralytics": ultra}],
           "backends": ["pytorch", "onnxruntime"], "batch_sizes": [1], "image_sizes": [320],
           "dataset": {"synth": {"images": 4, "seed": 2, "size": 320}}, "alignment": {"images": 2},
           "timing": {"warmup": 0, "iterations": 1, "e2e": False}, **extra}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))


def test_missing_pt_is_exit_2_nothing_downloaded(tmp_path):
    _matrix(tmp_path, {"model": "yolov8n.pt"})
    r = run_cli("plan", "m.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "models[0].ultralytics.model" in r.stderr and "nothing is downloaded" in r.stderr


def test_without_ultralytics_the_cells_are_skipped_with_the_reason(tmp_path):
    if _has_ultralytics(sys.executable):
        pytest.skip("ultralytics is importable in this interpreter: the absence path cannot be shown here")
    _matrix(tmp_path, {"model": "yolov8n.yaml", "python": sys.executable})
    plan = run_cli("plan", "m.yaml", cwd=tmp_path)
    assert plan.returncode == 0 and "NOT INSTALLED" in plan.stdout, plan.stdout
    r = run_cli("run", "m.yaml", "--cache-dir", tmp_path / "cache", "--db", f"sqlite:///{tmp_path}/r.db",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path}/r.db", readonly=True)
    cells = {c.backend: c for c in store.cells(store.get_run("latest").id)}
    assert cells["onnxruntime"].status == "skipped" and "ultralytics is not installed" in cells["onnxruntime"].error
    assert cells["onnxruntime"].stage == "export"
    assert "not pytorch" in cells["pytorch"].error


@pytest.mark.slow
@pytest.mark.skipif(not _has_ultralytics(UL_PYTHON),
                    reason="needs DETBENCH_ULTRALYTICS_PYTHON = an interpreter with ultralytics (it needs "
                           "torchvision, e.g. a venv with torch 2.14.1 + torchvision 0.29.1 + ultralytics; "
                           "torchvision does not import beside detbench's CPU torch 2.13)")
def test_ultralytics_export_runs_through_the_onnx_path(tmp_path):
    _matrix(tmp_path, {"model": "yolov8n.yaml"}, precisions=["fp32", "fp16"],
            eval={"score_thr": 0.25, "pre_topk": 1000, "keep_topk": 100})
    r = run_cli("run", "m.yaml", "--cache-dir", tmp_path / "cache", "--db", f"sqlite:///{tmp_path}/r.db",
                cwd=tmp_path, env={"DETBENCH_ULTRALYTICS_PYTHON": UL_PYTHON})
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path}/r.db", readonly=True)
    cells = {(c.backend, c.precision): c for c in store.cells(store.get_run("latest").id)}
    cell = cells[("onnxruntime", "fp32")]
    assert cell.status == "ok", (cell.error, cell.log_tail)
    assert r.returncode == 0, r.stderr
    assert cell.provenance["model_source"] == "ultralytics"
    assert cell.provenance["exporter"].startswith("ultralytics 8.")
    contract = cell.provenance["contract"]
    assert (contract["convention"], contract["raw_layout"], contract["num_classes"]) == ("yolo_raw", "v8", 80)
    assert len(contract["classes"]) == 80  # the names Ultralytics wrote into the graph
    # COCO-80 names are not the synthetic shapes: every class is reported unmapped, none silently dropped
    assert len(cell.provenance["unmapped_classes"]) == 80
    assert cells[("onnxruntime", "fp16")].status == "ok"
