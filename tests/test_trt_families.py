"""CI's TensorRT proof: every family × NMS variant × precision that detbench exports either
builds with TensorRT-RTX on this CPU-only machine, or is skipped with the exact reason."""
from __future__ import annotations

import json

import pytest

from conftest import has_module
from harness.models.table import MODELS

pytestmark = pytest.mark.skipif(
    not (has_module("tensorrt_rtx_bindings") and has_module("mmyolo") and has_module("onnxruntime")),
    reason="needs TensorRT-RTX (extra tensorrt-rtx), the mmyolo stack and onnxruntime")

NMS = ("none", "onnx", "efficient_nms", "batched_nms")
PRECISIONS = ("fp32", "fp16", "int8")


def cells_for(model: str, tmp_path, **eval_settings):
    from harness import matrix as mx
    from harness.data.datasets import resolve_dataset

    m = mx.parse({"models": [{"name": model, "checkpoint": "random"}], "backends": ["tensorrt"],
                  "precisions": list(PRECISIONS), "nms": list(NMS), "image_sizes": [64],
                  "devices": ["cuda"], "batch_sizes": [1, 2],
                  "dataset": {"synth": {"images": 2, "seed": 2, "size": 96}},
                  "calibration": {"images": 2, "seed": 3}, "eval": eval_settings})
    dataset = resolve_dataset(m.dataset, tmp_path)
    return [{**c, "dataset": dataset} for c in mx.expand(m) if c["batch"] == 1]


def build_outcome(cell, cache):
    from harness.backends.base import SkipCell
    from harness.backends.tensorrt import TensorRTRunner
    from harness.runner.context import CellContext

    runner = TensorRTRunner(cell, CellContext(cell, cache, cache))
    try:
        runner.build()
    except SkipCell as exc:
        return "skipped", str(exc), runner
    return "built", runner.info.facts["engine"], runner


# yolov8_n in the default suite; the other families (15-33 s each on 2 cores) in the slow tier
@pytest.mark.parametrize("model", [m if m == "yolov8_n" else pytest.param(m, marks=pytest.mark.slow)
                                   for m in MODELS])
def test_family_builds_or_says_why(model, tmp_path, record_property):
    table = {}
    for cell in cells_for(model, tmp_path):
        status, detail, _ = build_outcome(cell, tmp_path)
        table[(cell["nms"], cell["precision"])] = (status, detail)
    record_property("outcomes", {f"{k[0]}/{k[1]}": v[0] for k, v in table.items()})
    for precision in PRECISIONS:
        status, engine = table[("none", precision)]
        assert status == "built", (precision, engine)  # graphs ending at decoded boxes build
        assert engine["engine_size"] > 0 and engine["typing"] == "strong"
        assert engine["profile"] == [1, 1, 2]  # min/opt/max from the matrix's batch axis
        status, reason = table[("onnx", precision)]
        assert status == "skipped" and "NonMaxSuppression" in reason
        for plugin, op in (("efficient_nms", "EfficientNMS_TRT"), ("batched_nms", "BatchedNMSDynamic_TRT")):
            status, reason = table[(plugin, precision)]
            assert status == "skipped" and op in reason and "plugin registry lacks" in reason


def test_pre_topk_above_the_cap_is_clamped_with_a_warning(tmp_path):
    cell = next(c for c in cells_for("yolov8_n", tmp_path, pre_topk=30000)
                if c["nms"] == "onnx" and c["precision"] == "fp32")
    status, _, runner = build_outcome(cell, tmp_path)
    assert runner.info.facts["deploy_pre_topk"] == 3840
    assert any("pre_topk 30000 clamped to 3840" in w for w in runner.info.warnings)
    export = runner.info.facts["export"]
    assert export["pre_topk"] == 3840  # the graph itself carries the clamped value
    cap = runner.info.facts["nms_candidate_cap"]  # INMSLayer's own 5000 still binds (issue #11)
    assert cap["variant"] == "onnx" and cap["cap"] == 5000 and cap["binding"]
    assert any("considers at most 5000" in w for w in runner.info.warnings)


def test_pre_topk_above_the_cap_is_refused_when_asked(tmp_path):
    from harness.errors import UserError

    cell = next(c for c in cells_for("yolov8_n", tmp_path, pre_topk=30000, pre_topk_policy="refuse")
                if c["nms"] == "onnx" and c["precision"] == "fp32")
    with pytest.raises(UserError, match="pre_topk 30000 exceeds TensorRT's TopK limit 3840"):
        build_outcome(cell, tmp_path)


def test_int8_qdq_of_a_plugin_graph_calibrates_on_the_runnable_part(tmp_path):
    """TensorRT 11 int8 with EfficientNMS: ONNX Runtime cannot run the plugin, so calibration
    runs on the sub-graph feeding it and the Q/DQ graph keeps the plugin node."""
    import onnx

    from harness.calibration.qdq import quantize_qdq
    from harness.export.loader import export_for_cell
    from harness.runner.context import CellContext

    cell = next(c for c in cells_for("yolov8_n", tmp_path) if c["nms"] == "efficient_nms")
    ctx = CellContext(cell, tmp_path, tmp_path)
    onnx_path, _ = export_for_cell(ctx, ctx.build_model("cpu"))
    qdq, info = quantize_qdq(onnx_path, ctx.calibration_set(), "minmax", 99.99, tmp_path)
    ops = [n.op_type for n in onnx.load(str(qdq)).graph.node]
    assert "EfficientNMS_TRT" in ops and "QuantizeLinear" in ops
    assert info["calibration_cache_sha256"]


def test_matrix_naming_tensorrt_without_tensorrt_gives_skipped_cells(tmp_path):
    from conftest import run_cli

    (tmp_path / "m.yaml").write_text(
        "models: [{name: yolov8_n, checkpoint: random}]\nbackends: [tensorrt]\nimage_sizes: [64]\n"
        "devices: [cpu, cuda]\ndataset: {synth: {images: 1, size: 64}}\n")
    env = {"DETBENCH_TENSORRT": "none"}
    plan = run_cli("plan", "m.yaml", cwd=tmp_path, env=env)
    assert "tensorrt (unavailable: hidden by DETBENCH_TENSORRT=none)" in " ".join(plan.stdout.split())
    r = run_cli("run", "m.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr
    show = run_cli("show", "latest", "--json", cwd=tmp_path)
    cells = {c["device"]: c for c in json.loads(show.stdout)["cells"]}
    assert cells["cpu"]["status"] == "skipped" and "does not run on cpu" in cells["cpu"]["error"]
    assert cells["cuda"]["status"] == "skipped"
    assert "TensorRT is not installed here" in cells["cuda"]["error"]
