"""End to end (#19): a tiny rotated matrix through `detbench run` — the trained RTMDet-R fixture on
4 generated rotated images, the PyTorch reference and ONNX Runtime fp32 on CPU — stores rotated
AP and the alignment by rotated IoU, and `show` / `export` print them.  Also: the example matrix
matrices/rotated.yaml plans."""
from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import ROOT, run_cli
from harness import report
from harness.store import Store

FIXTURE = ROOT / "fixtures" / "rtmdet_r_synth"
KEYS = ("rtmdet_r_synth/pytorch/fp32/b1/s256/cpu/nms-none",
        "rtmdet_r_synth/onnxruntime/fp32/b1/s256/cpu/nms-none")


def test_example_matrix_plans_rotated_cells(tmp_path):
    done = run_cli("plan", ROOT / "matrices" / "rotated.yaml", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = json.loads(done.stdout)["cells"]
    assert len(cells) == 6 and {c["box_type"] for c in cells} == {"rotated"}
    assert not [c for c in cells if c["skip_reason"]]


@pytest.mark.slow
def test_tiny_rotated_matrix_end_to_end(tmp_path):
    matrix = tmp_path / "rotated.yaml"
    matrix.write_text(
        "name: rotated-e2e\n"
        f"models: [{{name: rtmdet_r_synth, config: {FIXTURE / 'config.py'}, "
        f"checkpoint: {FIXTURE / 'rtmdet_r_synth.pth'}}}]\n"
        "backends: [pytorch, onnxruntime]\nprecisions: [fp32]\nbatch_sizes: [1]\nimage_sizes: [256]\n"
        "devices: [cpu]\ndataset: {synth: {images: 4, seed: 2, size: 256, rotated: true}}\n"
        "timing: {warmup: 1, iterations: 3, e2e: false}\nalignment: {images: 4}\ntimeout_s: 300\n")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    done = run_cli("run", matrix, "--db", url, "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with Store(url, readonly=True) as store:
        run = store.get_run("latest")
        cells = {c.key: c for c in store.cells(run.id)}
        assert set(cells) == set(KEYS) and {c.status for c in cells.values()} == {"ok"}
        ref, ort = (cells[k] for k in KEYS)
        for cell in (ref, ort):
            m = cell.metrics
            assert m["box_type"] == "rotated" and "rotated IoU" in m["metric"]
            assert cell.params["box_type"] == "rotated"
            # a trained fixture (random weights score 0): rotated boxes land on the ground truth
            assert m["AP50"] >= 0.15 and m["mAP50_07"] >= 0.15
            assert cell.ap == m["AP"] and 0 < m["AP"] <= m["AP50"]
            assert "rotated IoU" in cell.provenance["eval"]["metric"]
            classes = store.class_ap(cell.id)
            assert len(classes) == 4 and any(r["ap"] for r in classes)
            entries = json.loads(open(cell.artifacts["detections"]).read())
            assert entries and all(len(e["rbox"]) == 5 and len(e["bbox"]) == 4 for e in entries)
        assert abs(ort.metrics["AP"] - ref.metrics["AP"]) < 0.01  # fp32 ONNX Runtime ~ PyTorch
        rec = store.alignment(ort.id)
    assert rec["status"] == "ok" and rec["reference"] == KEYS[0], rec
    assert rec["box_type"] == "rotated" and rec["iou"] == "rotated"
    assert rec["matched_pct"] >= 95 and rec["images_replayed"] == 4
    assert sum(rec["angle_delta_hist"]["counts"]) == rec["matched"] > 0
    assert sum(rec["center_shift_hist"]["counts"]) == rec["matched"]
    assert rec["tensor"]["available"] and rec["tensor_boxes_max_abs_err"] < 1e-2
    assert rec["ap_delta"] == pytest.approx(ort.metrics["AP"] - ref.metrics["AP"])

    shown = run_cli("show", "latest", "--db", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "rotated" in shown.stdout and "mAP50_07" in shown.stdout
    assert f"{ref.metrics['AP']:.4f}" in shown.stdout
    assert report.ROTATED_METRICS in " ".join(shown.stdout.split())
    exported = run_cli("export", "latest", "--format", "csv", "--db", url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(line for line in io.StringIO(exported.stdout) if not line.startswith("#")))
    assert {r["boxes"] for r in rows} == {"rotated"}
    assert float(rows[0]["AP"]) == pytest.approx(ref.metrics["AP"])
    assert float(rows[0]["mAP50_07"]) == pytest.approx(ref.metrics["mAP50_07"])
    doc = json.loads(run_cli("export", "latest", "--format", "json", "--db", url, cwd=tmp_path).stdout)
    assert doc["alignment"][KEYS[1]]["angle_delta_hist"] == rec["angle_delta_hist"]
    compared = run_cli("compare", "latest", "--db", url, cwd=tmp_path)
    assert compared.returncode == 0 and KEYS[1] in compared.stdout
