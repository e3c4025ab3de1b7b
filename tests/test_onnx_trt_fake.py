"""TensorRT execution of an onnx: model, on the fake TensorRT runtime of test_trt_runtime_fake.

Full TensorRT cannot run here; this drives the real TensorRTRunner (build -> activate ->
bind -> infer) for a user's end2end graph whose engine lists its outputs in another order
than the graph, and checks that outputs are taken by the contract's names and mapped to
detections in original pixels with dataset labels.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

pytest.importorskip("onnx", reason="needs onnx (extra onnx)")

from test_trt_runtime_fake import H, W, Setup, prepared  # noqa: E402  (the shared fakes)


def _end2end_graph(path):
    """A graph with detbench's fake engine's I/O: images [N,3,8,8] -> num_dets, det_boxes, ..."""
    import onnx
    from onnx import TensorProto, helper

    outs = {"num_dets": (TensorProto.INT32, ["N", 1]), "det_boxes": (TensorProto.FLOAT, ["N", 5, 4]),
            "det_scores": (TensorProto.FLOAT, ["N", 5]), "det_classes": (TensorProto.INT32, ["N", 5])}
    nodes = [helper.make_node("Identity", ["images"], ["unused"])]
    for name, (dtype, _) in outs.items():
        shape = [1, 1] if name == "num_dets" else ([1, 5, 4] if name == "det_boxes" else [1, 5])
        value = helper.make_tensor(f"{name}_v", dtype, shape, [0] * int(np.prod(shape)))
        nodes.append(helper.make_node("Constant", [], [name], value=value))
    graph = helper.make_graph(nodes, "e2e",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, H, W])],
                              [helper.make_tensor_value_info(n, d, s) for n, (d, s) in outs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_tensorrt_runs_an_onnx_model_by_its_output_names(monkeypatch, tmp_path):
    from harness.backends.onnx_model import OnnxModel
    from harness.backends.tensorrt import TensorRTRunner
    from harness.models.onnx_source import resolve

    path = _end2end_graph(tmp_path / "e2e.onnx")
    setup = Setup(monkeypatch, tmp_path, path)
    setup.nms = "efficient_nms"  # the fake engine then produces num_dets / det_boxes / ...
    monkeypatch.setattr(OnnxModel, "_probe", lambda self: None)  # no ONNX Runtime run of the stand-in
    spec = {"name": "m", "onnx": {"path": str(path)}}
    cell = {"key": "fake", "backend": "tensorrt", "model": "m", "precision": "fp32", "batch": 2,
            "batch_axis": [2], "imgsz": H, "device": "cpu", "nms": "none", "eval": {},
            "calibration": {"method": "minmax", "percentile": 99.99}}
    ctx = types.SimpleNamespace(
        cell=cell, cache_dir=tmp_path, stage=lambda name: None, model_spec=spec, is_onnx_source=True,
        onnx_contract=resolve(spec["onnx"]), export_facts={}, onnx_test_cfg=lambda: {},
        dataset=types.SimpleNamespace(category_names=("circle", "square"), category_ids=(7, 12)))
    runner = TensorRTRunner(cell, ctx)
    runner.load()
    assert runner.output_names[0] == "det_scores"  # the engine's order, not the graph's
    dets = runner.infer(prepared([3, 4]))
    assert [d.boxes.tolist() for d in dets] == [[[3, 3, 13, 23]], [[4, 4, 14, 24]]]
    assert [d.labels.tolist() for d in dets] == [[1], [1]]
    assert [d.scores.tolist() for d in dets] == [[0.5], [0.5]]
    assert runner.info.facts["model_source"] == "onnx"
    assert setup.builds[0]["profile"] == (1, 2, 2)
