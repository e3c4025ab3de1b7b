"""PyTorch and ONNX Runtime cells time the same region: input tensor on the device -> decoded boxes + scores.

The callable each runner hands to the timed loop (``bind_forward``) is run on
the same preprocessed batch of the trained fixture: both must return the
decoded ``boxes (N, A, 4)`` and ``scores (N, A, C)`` — the same tensors, to
ONNX Runtime's fp32 tolerance — and postprocessing that very output must give
the cell's detections, so nothing of the model's work is left outside the timed
region and nothing of the postprocessing is inside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, has_module

pytestmark = pytest.mark.skipif(not (has_module("mmyolo") and has_module("onnxruntime")),
                                reason="needs the mmyolo stack and onnxruntime (extras mmyolo, onnx)")

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def _cell(tmp: Path, backend: str, images: Path, ann: Path) -> dict:
    from harness import matrix as mx

    m = mx.parse({"name": "boundary",
                  "models": [{"name": "yolov8_synth", "config": str(FIXTURE / "config.py"),
                              "checkpoint": str(FIXTURE / "yolov8_synth.pth")}],
                  "backends": [backend], "precisions": ["fp32"], "batch_sizes": [2],
                  "image_sizes": [320], "dataset": {"images": str(images), "annotations": str(ann)}})
    cell = mx.expand(m)[0]
    cell["dataset"] = {"images": str(images), "annotations": str(ann), "limit": None}
    cell["cache_dir"] = str(tmp / "cache")
    return cell


def _as_numpy(out):
    return [o.detach().float().cpu().numpy() if hasattr(o, "detach") else np.asarray(o) for o in out]


def test_pytorch_and_onnxruntime_time_the_same_boundary(tmp_path, synth_val):
    from harness.backends import BACKENDS
    from harness.measure.measure_cell import measure
    from harness.runner.context import CellContext

    images_dir, ann = synth_val
    timed, region = {}, {}
    for backend in ("pytorch", "onnxruntime"):
        cell = _cell(tmp_path, backend, images_dir, ann)
        work = tmp_path / backend
        work.mkdir()
        ctx = CellContext(cell, work, tmp_path / "cache")
        runner = BACKENDS[backend].load_runner_class()(cell, ctx)
        runner.load()
        ds = ctx.dataset
        pre = ctx.preprocessor("cpu")
        imgs = [ds.read(im) for im in ds.images[:2]]
        ids = [im.id for im in ds.images[:2]]
        prepared = pre(imgs, ids)
        out = runner.bind_forward(prepared.inputs)()
        timed[backend] = _as_numpy(out if isinstance(out, (tuple, list)) else out.copy_outputs_to_cpu())
        # the timed output is exactly what postprocessing consumes to make the cell's detections
        direct = runner.infer(prepared)
        via_timed = runner.postprocess(out, prepared.metas)
        for a, b in zip(direct, via_timed):
            assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        cell["timing"] = {**cell["timing"], "warmup": 0, "iterations": 1, "e2e": True}
        lat = measure(runner, pre, imgs, ids, cell)
        region[backend] = (lat["latency"]["region"], lat["latency_e2e"]["region"])
        runner.close()

    (pt_boxes, pt_scores), (ort_boxes, ort_scores) = timed["pytorch"], timed["onnxruntime"]
    assert pt_boxes.shape == ort_boxes.shape and pt_boxes.shape[-1] == 4
    assert pt_scores.shape == ort_scores.shape == (2, pt_boxes.shape[1], 3)  # the fixture: 3 classes
    np.testing.assert_allclose(ort_boxes, pt_boxes, atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(ort_scores, pt_scores, atol=1e-5, rtol=0)
    assert region["pytorch"] == region["onnxruntime"] == ("model+decode", "e2e")


def test_in_graph_nms_is_labelled():
    from harness.measure.timing import REGION_TEXT, model_region

    assert model_region("none") == "model+decode"
    for nms in ("onnx", "efficient_nms", "batched_nms"):
        assert model_region(nms) == "model+decode+nms"
        assert "NMS" in REGION_TEXT[model_region(nms)]
