"""AP-aware int8 (#18): layer groups, the budget search, the sensitivity split's errors, and the
mixed Q/DQ graph that ONNX Runtime runs and TensorRT-RTX builds."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import assert_tensorrt_rtx_builds_int8, has_module, run_cli, yolo_n_export
from harness.errors import UserError

needs_onnx = pytest.mark.skipif(not has_module("onnx"), reason="needs onnx")
needs_stack = pytest.mark.skipif(
    not (has_module("mmyolo") and has_module("onnxruntime") and has_module("cv2")),
    reason="needs the mmyolo stack, onnxruntime and opencv")
needs_rtx = pytest.mark.skipif(not has_module("tensorrt_rtx_bindings"),
                               reason="needs TensorRT-RTX (extra tensorrt-rtx)")


def _graph(names):
    nodes = [SimpleNamespace(op_type="Conv", name=n) for n in names]
    nodes.append(SimpleNamespace(op_type="Softmax", name="/Softmax"))
    return SimpleNamespace(graph=SimpleNamespace(node=nodes))


def test_layer_groups_split_backbone_neck_head_branches_and_decode():
    from harness.calibration.sensitivity import layer_groups

    names = ["/backbone/stem/conv/Conv", "/backbone/stage1/stage1.0/conv/Conv",
             "/backbone/stage1/stage1.1/blocks.0/conv1/conv/Conv",
             "/neck/top_down_layers.0/main_conv/conv/Conv", "/neck/bottom_up_layers.1/final_conv/conv/Conv",
             "/bbox_head/head_module/cls_preds.0/cls_preds.0.0/conv/Conv",
             "/bbox_head/head_module/cls_preds.0/cls_preds.0.2/Conv",
             "/bbox_head/head_module/cls_preds.1/cls_preds.1.0/conv/Conv",
             "/bbox_head/head_module/cls_preds.1/cls_preds.1.2/Conv",
             "/bbox_head/head_module/reg_preds.0/reg_preds.0.2/Conv", "/Conv_decode"]
    groups = layer_groups(_graph(names))
    assert list(groups) == ["backbone.stem", "backbone.stage1", "neck.top_down_layers",
                            "neck.bottom_up_layers", "head.cls_preds.convs", "head.cls_preds.pred",
                            "head.reg_preds.pred", "decode"]
    assert groups["backbone.stage1"] == names[1:3]
    assert groups["head.cls_preds.pred"] == [names[6], names[8]]  # the last conv of each level
    assert groups["head.cls_preds.convs"] == [names[5], names[7]]
    assert groups["decode"] == ["/Conv_decode"]


class FakeEvaluator:
    """AP = fp32 minus the loss of every group still int8 (additive), no ONNX involved."""

    def __init__(self, losses, groups, fp32=0.60):
        self.losses, self.groups, self.fp32, self.calls = losses, groups, fp32, []

    def evaluate(self, exclude):
        self.calls.append(exclude)
        if exclude is None:
            return {"ap": self.fp32}
        float_groups = {g for g, nodes in self.groups.items() if nodes and set(nodes) <= set(exclude)}
        return {"ap": self.fp32 - sum(v for g, v in self.losses.items() if g not in float_groups)}


def _fixture_search(budget, min_int8_flops, losses, ranking=None):
    from harness.calibration.sensitivity import search_mix

    groups = {"backbone": ["b1", "b2"], "neck": ["n1"], "head.pred": ["h1"], "decode": []}
    flops = {"b1": 50.0, "b2": 30.0, "n1": 15.0, "h1": 5.0}
    ev = FakeEvaluator(losses, groups)
    full = ev.fp32 - sum(losses.values())
    rows = []
    for g, nodes in groups.items():
        if nodes:
            rows.append({"group": g, "convs": len(nodes), "recovered_ap": (ranking or losses)[g]})
    rows.sort(key=lambda r: -r["recovered_ap"])
    table = {"fp32_ap": ev.fp32, "int8_ap": full, "rows": rows + [{"group": "decode", "convs": 0}]}
    return search_mix(ev, table, groups, flops, budget, min_int8_flops)


def test_search_keeps_the_fewest_groups_float_within_the_budget():
    mix = _fixture_search(0.003, 0.5, {"backbone": 0.001, "neck": 0.004, "head.pred": 0.006})
    assert mix["met"] and mix["kept_float_groups"] == ["head.pred", "neck"]
    assert mix["sensitivity_delta_ap"] == pytest.approx(-0.001)
    assert mix["int8_conv_flops_fraction"] == pytest.approx(0.80)
    assert mix["kept_float_nodes"] == ["h1", "n1"]
    assert "note" not in mix


def test_search_stops_as_soon_as_the_budget_is_met():
    mix = _fixture_search(0.004, 0.0, {"backbone": 0.0025, "neck": 0.001, "head.pred": 0.006})
    assert mix["met"] and mix["kept_float_groups"] == ["head.pred"]
    assert [s["action"] for s in mix["search"]] == ["all int8", "keep head.pred float"]


def test_search_prunes_a_group_that_is_no_longer_needed():
    # the ranking overrates the head (0.006 measured alone, 0.0005 in the mix): greedy keeps head
    # then neck float; pruning gives the head back to int8 because neck alone meets the budget
    mix = _fixture_search(0.0016, 0.0, {"backbone": 0.001, "neck": 0.004, "head.pred": 0.0005},
                          ranking={"backbone": 0.001, "neck": 0.004, "head.pred": 0.006})
    assert mix["met"] and mix["kept_float_groups"] == ["neck"]
    assert mix["search"][-1]["action"] == "prune head.pred (back to int8)"
    assert mix["sensitivity_delta_ap"] == pytest.approx(-0.0015)


def test_unreachable_budget_says_so_and_keeps_the_best_mix():
    # keeping the backbone float would leave only 20 % of conv FLOPs int8 (< 50 %): not allowed
    mix = _fixture_search(0.0, 0.5, {"backbone": 0.01, "neck": 0.002, "head.pred": 0.001})
    assert not mix["met"]
    assert mix["kept_float_groups"] == ["neck", "head.pred"]  # the best mix evaluated
    assert mix["sensitivity_delta_ap"] == pytest.approx(-0.01)
    assert "no mix met the budget 0.0" in mix["note"] and "kept the best mix found" in mix["note"]
    assert any(s.get("reason", "").startswith("int8 share of conv FLOPs would fall below")
               for s in mix["search"])


class NoisyEvaluator(FakeEvaluator):
    """FakeEvaluator with a paired bootstrap: every Q/DQ graph's ΔAP has the SE ``se``."""

    def __init__(self, losses, groups, se):
        super().__init__(losses, groups)
        self.se, self.bootstrap = se, {"samples": 100, "seed": 0, "level": 0.95}

    def delta(self, exclude):
        d = self.evaluate(frozenset(exclude))["ap"] - self.fp32
        return {"delta_ap": d, "se": self.se, "ci_low": d - 2 * self.se, "ci_high": d + 2 * self.se}


def _noisy_search(budget, losses, se, margin_se, min_int8_flops=0.0):
    from harness.calibration.sensitivity import search_mix

    groups = {"backbone": ["b1", "b2"], "neck": ["n1"], "head.pred": ["h1"], "decode": []}
    flops = {"b1": 50.0, "b2": 30.0, "n1": 15.0, "h1": 5.0}
    ev = NoisyEvaluator(losses, groups, se)
    rows = sorted(({"group": g, "convs": len(n), "recovered_ap": losses[g]} for g, n in groups.items() if n),
                  key=lambda r: -r["recovered_ap"])
    table = {"fp32_ap": ev.fp32, "int8_ap": ev.fp32 - sum(losses.values()), "rows": rows}
    return search_mix(ev, table, groups, flops, budget, min_int8_flops, margin_se)


def test_search_demands_the_budget_with_a_margin_of_one_standard_error():
    losses = {"backbone": 0.0005, "neck": 0.002, "head.pred": 0.006}
    # keeping the head float leaves ΔAP -0.0025: within the budget 0.003 as a point estimate,
    # but not once one SE (0.001) is subtracted, so the neck is kept float too (ΔAP -0.0005)
    strict = _noisy_search(0.003, losses, se=0.001, margin_se=1.0)
    assert strict["met"] and strict["kept_float_groups"] == ["head.pred", "neck"]
    assert strict["criterion"] == "ΔAP − 1 × SE ≥ −0.003"
    assert strict["sensitivity_delta_ap"] == pytest.approx(-0.0005)
    assert strict["sensitivity_delta_ap_se"] == 0.001
    assert strict["sensitivity_delta_ap_ci"] == [pytest.approx(-0.0025), pytest.approx(0.0015)]
    head_only = next(s for s in strict["search"] if s["action"] == "keep head.pred float")
    assert head_only["delta_ap"] == pytest.approx(-0.0025) and head_only["meets_budget"] is False
    assert head_only["criterion"] == pytest.approx(-0.0035) and head_only["se"] == 0.001
    # pruning uses the same margin: giving the head back to int8 (ΔAP -0.0065) fails it
    assert strict["search"][-1]["action"] == "prune head.pred (back to int8)"
    # without the margin the point estimate decides: the head alone
    loose = _noisy_search(0.003, losses, se=0.001, margin_se=0.0)
    assert loose["met"] and loose["kept_float_groups"] == ["head.pred"]
    assert loose["criterion"] == "ΔAP ≥ −0.003"


def test_search_margin_can_make_a_budget_unreachable():
    # the backbone may not stay float (50 % int8 FLOPs at least); head and neck float: ΔAP -0.0005,
    # SE 0.003 -> criterion -0.0035 < -0.003: not met, though the point estimate is far inside
    mix = _noisy_search(0.003, {"backbone": 0.0005, "neck": 0.002, "head.pred": 0.006}, se=0.003,
                        margin_se=1.0, min_int8_flops=0.5)
    assert not mix["met"] and "ΔAP − 1 × SE ≥ −0.003" in mix["note"]
    assert mix["kept_float_groups"] == ["head.pred", "neck"]  # the best criterion found
    assert mix["sensitivity_criterion"] == pytest.approx(-0.0035)


def test_attribution_sentence_names_the_group_and_share():
    from harness.calibration.sensitivity import attribution_lines

    table = {"int8_delta_ap": -0.010, "images": 64,
             "rows": [{"group": "backbone.stage2", "convs": 7, "recovered_fraction": 0.72,
                       "flops_fraction": 0.078}]}
    assert attribution_lines(table) == [
        "72% of the int8 ΔAP (-0.0100) disappears when backbone.stage2 stays float (7.8% of conv "
        "FLOPs; sensitivity split, 64 images)"]
    table["rows"][0].update({"leave_out_delta_ap": -0.0028, "leave_out_se": 0.0021})
    assert attribution_lines(table)[0].endswith(
        "sensitivity split, 64 images; leave-this-out ΔAP -0.0028 ± 0.0021 SE)")


# ---------------------------------------------------------------- bad input: the sensitivity split


def _matrix(tmp_path, calibration: str):
    path = tmp_path / "m.yaml"
    path.write_text(
        "models: [{name: yolov8_n, checkpoint: random}]\nbackends: [onnxruntime]\n"
        "precisions: [int8-mixed]\ndataset: {synth: {images: 4, seed: 2, size: 64}}\n"
        f"calibration: {calibration}\n")
    return path


def test_too_small_sensitivity_split_is_one_clear_error(tmp_path):
    r = run_cli("plan", _matrix(tmp_path, "{sensitivity_images: 4}"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1 and "calibration" in lines[0] and "sensitivity_images is 4" in lines[0]
    assert not list(tmp_path.glob("*.db"))


def test_sensitivity_split_equal_to_calibration_split_is_refused(tmp_path):
    r = run_cli("plan", _matrix(tmp_path, "{seed: 3, sensitivity_seed: 3}"), cwd=tmp_path)
    assert r.returncode == 2 and "sensitivity_seed 3 equals calibration.seed" in r.stderr + r.stdout


@pytest.mark.skipif(not has_module("cv2"), reason="needs opencv")
def test_empty_sensitivity_split_after_limit_names_the_setting(tmp_path, synth_val):
    from harness.calibration.sensitivity import sensitivity_images

    images, ann = synth_val  # 6 images: 4 evaluated, 2 calibration, none left for sensitivity
    cell = {"calibration": {"images": 2, "seed": 3, "sensitivity_images": 64, "sensitivity_seed": 5,
                            "sensitivity_source": None},
            "dataset": {"images": str(images), "annotations": str(ann), "limit": 4}}
    with pytest.raises(UserError, match=r"calibration.sensitivity_images: the sensitivity split .* has 0 "
                                        r"images, fewer than 8"):
        sensitivity_images(cell, tmp_path)


def test_sensitivity_seed_equal_to_evaluation_seed_is_refused(tmp_path):
    from harness.calibration.sensitivity import sensitivity_images

    cell = {"calibration": {"images": 2, "seed": 3, "sensitivity_images": 16, "sensitivity_seed": 2,
                            "sensitivity_source": None},
            "dataset": {"synth": {"images": 4, "seed": 2, "size": 64}}}
    with pytest.raises(UserError, match="calibration.sensitivity_seed 2 equals the evaluation seed"):
        sensitivity_images(cell, tmp_path)


# ---------------------------------------------------------------- the mixed graph itself


@pytest.fixture(scope="module")
def mixed_graph(tmp_path_factory):
    """yolov8_n (random weights, 64 px): its export, the full Q/DQ graph and a mix with the
    stem and both prediction convs kept float."""
    from harness.calibration.qdq import quantize_qdq

    tmp = tmp_path_factory.mktemp("mixed")
    onnx_path, groups, calib = yolo_n_export(tmp, {"images": 2, "seed": 3})
    kept = groups["backbone.stem"] + groups["head.cls_preds.pred"] + groups["head.reg_preds.pred"]
    full, info_full = quantize_qdq(onnx_path, calib, "minmax", 99.99, tmp)
    mixed, info = quantize_qdq(onnx_path, calib, "minmax", 99.99, tmp, exclude=tuple(kept))
    return SimpleNamespace(fp32=onnx_path, full=full, mixed=mixed, kept=kept, groups=groups,
                           info=info, info_full=info_full, calib=calib)


def _dq_fed(path):
    """Conv node name -> whether its data input comes from a DequantizeLinear."""
    import onnx

    g = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    return {n.name: producer.get(n.input[0]) == "DequantizeLinear" for n in g.node if n.op_type == "Conv"}


@needs_stack
def test_mixed_qdq_leaves_exactly_the_kept_convs_float(mixed_graph):
    fed = _dq_fed(mixed_graph.mixed)
    assert {n for n, q in fed.items() if not q} == set(mixed_graph.kept)
    assert all(_dq_fed(mixed_graph.full).values())
    assert mixed_graph.info["calibration_cache_sha256"] == mixed_graph.info_full["calibration_cache_sha256"]
    assert mixed_graph.info["settings"]["extra_options"]["ActivationSymmetric"]  # TensorRT settings


@needs_stack
def test_onnxruntime_runs_the_mixed_graph_closer_to_fp32(mixed_graph):
    import numpy as np
    import onnxruntime as ort

    from harness.calibration.sensitivity import sqnr_db

    x = mixed_graph.calib.batches[0]
    out = {}
    for name in ("fp32", "full", "mixed"):
        sess = ort.InferenceSession(str(getattr(mixed_graph, name)), providers=["CPUExecutionProvider"])
        out[name] = sess.run(None, {"images": x})
    assert out["mixed"][0].shape == out["fp32"][0].shape and np.isfinite(out["mixed"][1]).all()
    assert sqnr_db(out["fp32"][1], out["mixed"][1]) > sqnr_db(out["fp32"][1], out["full"][1])


@needs_stack
@needs_rtx
def test_tensorrt_rtx_builds_the_mixed_graph(mixed_graph):
    r = assert_tensorrt_rtx_builds_int8(mixed_graph.mixed)
    assert "fp32" in set(r.layer_precisions.values()), r.layer_precisions


@needs_stack
def test_conv_flops_of_the_export_sum_over_groups(mixed_graph):
    import onnx

    from harness.calibration.sensitivity import conv_flops

    flops = conv_flops(onnx.load(str(mixed_graph.fp32)), 64)
    assert set(flops) == {n for nodes in mixed_graph.groups.values() for n in nodes}
    assert all(v > 0 for v in flops.values())
    stem = flops[mixed_graph.groups["backbone.stem"][0]]
    # yolov8_n stem: 3->16 channels, 3x3, stride 2 at 64 px -> 32x32 outputs
    assert stem == 2 * 16 * 3 * 9 * 32 * 32


def test_mse_threshold_clips_a_rare_outlier_but_not_a_uniform_range():
    import numpy as np

    from harness.calibration.qdq import mse_thresholds

    edges = np.linspace(0, 100, 2049)
    outlier = np.zeros(2048)
    outlier[:20] = 100_000  # |x| <= ~1 almost always: their rounding error outweighs clipping one
    outlier[-1] = 1  # one value near 100
    uniform = np.full(2048, 10.0)
    t = mse_thresholds({"outlier": (outlier, edges, 0, 100), "uniform": (uniform, edges, 0, 100)})
    assert float(t["outlier"][1]) < 20 and float(t["outlier"][0]) == -float(t["outlier"][1])
    assert float(t["uniform"][1]) > 90


def _provenance():
    table = {"split": "synth seed 5", "images": 64, "method": "minmax", "fp32_ap": 0.59,
             "int8_ap": 0.58, "int8_delta_ap": -0.01, "int8_output_sqnr_db": 20.0,
             "rows": [{"group": "backbone.stage2", "convs": 7, "flops_fraction": 0.078, "rank": 1,
                       "only_delta_ap": -0.003, "leave_out_delta_ap": -0.004, "recovered_ap": 0.006,
                       "recovered_fraction": 0.6, "conv_sqnr_db": 23.5, "only_output_sqnr_db": 25.8},
                      {"group": "decode", "convs": 0, "flops_fraction": 0.0, "note": "no Conv"}]}
    mix = {"ap_budget": 0.003, "met": True, "kept_float_groups": ["backbone.stage2"],
           "kept_float_nodes": ["a", "b"], "int8_conv_flops_fraction": 0.922,
           "sensitivity_delta_ap": -0.002, "search": []}
    return {"int8_sensitivity": table, "int8_mixed": mix}


def test_compare_prints_the_ranked_table_and_the_mix(capsys):
    from harness.runner.compare import int8_layers, print_table

    layers = int8_layers(_provenance())
    assert layers["mixed"]["kept_float_convs"] == 2 and "kept_float_nodes" not in layers["mixed"]
    assert layers["attribution"][0].startswith("60% of the int8 ΔAP (-0.0100) disappears when backbone.stage2")
    record = {"cell": "m/onnxruntime/int8-mixed/b1", "reference": "m/pytorch/fp32/b1", "status": "ok",
              "int8_layers": layers}
    print_table("r1", [record])
    out = capsys.readouterr().out
    assert "int8 sensitivity per layer group (ranked)" in out and "backbone.stage2" in out
    assert "budget 0.003 met" in out and "92.2% of conv FLOPs int8" in out
    assert "no Conv" not in out and "decode" in out  # decode listed, never quantized


def test_compare_shows_the_bootstrap_interval_and_the_criterion():
    from harness.calibration.attribution import caption, rows
    from harness.runner.compare import int8_layers, mix_summary, sensitivity_rows

    prov = _provenance()
    prov["int8_sensitivity"].update({"int8_delta_ap_se": 0.0021, "int8_delta_ap_ci": [-0.014, -0.006],
                                     "bootstrap": {"samples": 500, "seed": 0, "level": 0.95}})
    prov["int8_mixed"].update({"criterion": "ΔAP − 1 × SE ≥ −0.003", "sensitivity_delta_ap_se": 0.0008,
                               "sensitivity_delta_ap_ci": [-0.0036, -0.0005]})
    prov["int8_sensitivity"]["rows"][0]["leave_out_se"] = 0.0019
    shown = sensitivity_rows(int8_layers(prov))
    assert shown[0]["± SE (left float)"] == "0.0019" and shown[1]["± SE (left float)"] == "—"
    text = mix_summary(int8_layers(prov))
    assert "ΔAP -0.0100 ± 0.0021 (SE; 95% CI [-0.0140, -0.0060])" in text
    assert "paired bootstrap over images, 500 resamples, seed 0" in text
    assert "budget 0.003 met (ΔAP − 1 × SE ≥ −0.003)" in text
    assert text.endswith("ΔAP -0.0020 ± 0.0008 (SE; 95% CI [-0.0036, -0.0005])")
    record = {**_attribution(), "int8_delta_ap_se": 0.002, "int8_delta_ap_ci": [-0.014, -0.006],
              "bootstrap": {"samples": 500, "seed": 0, "level": 0.95}}
    record["rows"][0] = {**record["rows"][0], "delta_ap_ci": [-0.004, 0.001], "delta_ap_se": 0.0012}
    table = rows(record)
    assert table[0]["ΔAP 95% CI"] == "[-0.0140, -0.0060]" and table[1]["ΔAP 95% CI"] == "[-0.0040, +0.0010]"
    assert table[2]["ΔAP 95% CI"] == "—"
    assert "(ΔAP -0.0100 ± 0.0020 (SE; 95% CI [-0.0140, -0.0060])); ΔAP intervals: paired bootstrap" in caption(record)


def test_no_table_for_cells_without_sensitivity():
    from harness.runner.compare import int8_layers

    assert int8_layers({"calibration_method": "minmax"}) is None


@needs_stack
@pytest.mark.slow
def test_onnxruntime_int8_mixed_cell_end_to_end(tmp_path):
    """The runner path on the trained fixture (160 px, tiny splits): ranked table, mix, one graph."""
    from harness import matrix as mx
    from harness.backends.onnxruntime import OnnxRuntimeRunner
    from harness.data.datasets import resolve_dataset
    from harness.runner.context import CellContext

    from conftest import ROOT

    fixture = ROOT / "fixtures/yolov8_synth"
    m = mx.parse({"models": [{"name": "fx", "config": str(fixture / "config.py"),
                              "checkpoint": str(fixture / "yolov8_synth.pth")}],
                  "backends": ["onnxruntime"], "precisions": ["int8-mixed"], "image_sizes": [160],
                  "dataset": {"synth": {"images": 4, "seed": 2, "size": 160}},
                  "calibration": {"images": 4, "seed": 3, "sensitivity_images": 8, "sensitivity_seed": 5,
                                  "ap_budget": 0.0, "min_int8_flops": 0.0}})
    cell = {**mx.expand(m)[0], "dataset": resolve_dataset(m.dataset, tmp_path)}
    runner = OnnxRuntimeRunner(cell, CellContext(cell, tmp_path, tmp_path))
    runner.load()
    facts = runner.info.facts
    table, mix = facts["int8_sensitivity"], facts["int8_mixed"]
    groups = [r["group"] for r in table["rows"]]
    assert {"backbone.stem", "neck.top_down_layers", "head.cls_preds.pred", "decode"} <= set(groups)
    assert [r["rank"] for r in table["rows"] if r["convs"]] == list(range(1, len(groups)))
    assert table["images"] == 8 and "synth seed 5" in table["split"]
    # the paired bootstrap (500 resamples by default) and the margin criterion ΔAP − 1 × SE ≥ −budget
    assert table["bootstrap"] == {"samples": 500, "seed": 0, "level": 0.95}
    lo, hi = table["int8_delta_ap_ci"]
    assert lo <= hi and table["int8_delta_ap_se"] >= 0
    for row in table["rows"]:  # each group's leave-this-out ΔAP with its interval
        if row["convs"]:
            assert row["leave_out_ci"][0] <= row["leave_out_ci"][1] and row["leave_out_se"] >= 0
    assert mix["criterion"] == "ΔAP − 1 × SE ≥ −0.0"
    assert mix["sensitivity_criterion"] == pytest.approx(mix["sensitivity_delta_ap"] - mix["sensitivity_delta_ap_se"])
    assert mix["met"] == (mix["sensitivity_criterion"] >= -0.0)
    for step in mix["search"]:
        if step["delta_ap"] is not None:
            assert step["criterion"] == pytest.approx(step["delta_ap"] - step["se"])
            assert step["ci_low"] <= step["ci_high"]
    fed = _dq_fed(facts["model_file"])
    assert {n for n, q in fed.items() if not q} == set(mix["kept_float_nodes"])
    if not mix["met"]:
        assert any("kept the best mix found" in w for w in runner.info.warnings)
    att = facts["int8_attribution"]  # the same question on the cell's own evaluation images
    assert att["images"] == 4 and att["split"] == "evaluation split" and att["match_iou"] == 0.5
    assert [r["name"] for r in att["rows"] if r["kind"] == "part"] == ["backbone", "neck", "head"]
    top = [r["group"] for r in table["rows"] if r.get("rank") in (1, 2, 3)]
    assert [r["name"] for r in att["rows"] if r["kind"] == "group"] == [
        g for g in top if g not in ("backbone", "neck", "head")][:3]
    assert att["int8_differences"] == att["int8_missing"] + att["int8_extra"] > 0
    for r in att["rows"]:
        assert r["delta_ap"] == pytest.approx(r["ap"] - att["fp32_ap"])
        assert r["delta_ap_ci"][0] <= r["delta_ap_ci"][1] and r["delta_ap_se"] >= 0
    assert "int8_delta_ap_ci" in att and att["bootstrap"]["samples"] == 500
    runner.close()


@pytest.mark.skipif(not (has_module("streamlit") and has_module("plotly")), reason="needs the dashboard extra")
def test_dashboard_alignment_page_shows_the_int8_table(tmp_path, monkeypatch):
    """A stored int8-mixed cell with its alignment record, on the dashboard's alignment page."""
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from harness.runner.compare import int8_layers
    from harness.store import Store

    url = f"sqlite:///{tmp_path / 'int8.db'}"
    key = "m/onnxruntime/int8-mixed/b1/s320/cpu/nms-none"
    axes = {"model": "m", "backend": "onnxruntime", "precision": "int8-mixed", "batch": 1, "imgsz": 320,
            "device": "cpu", "nms": "none"}
    with Store(url) as store:
        run_id = store.create_run(name="int8", matrix_path=None, matrix_hash="0", matrix_yaml="",
                                  git_sha=None, detbench_version="0", environment={},
                                  cells=[{"key": key, "position": 0, **axes, "params": {}}])
        cell = store.cells(run_id)[0]
        provenance = {**_provenance(), "int8_attribution": _attribution()}
        store.record_result(cell.id, status="ok", metrics={"AP": 0.6067}, provenance=provenance)
        store.record_alignment(cell.id, {"cell": key, "reference": "m/pytorch/fp32/b1/s320/cpu/nms-none",
                                         "status": "ok", "missing": 3, "extra": 2,
                                         "int8_layers": int8_layers(provenance)})
    monkeypatch.setenv("DETBENCH_DB", url)
    at = AppTest.from_file(str(ROOT / "dashboard/app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/alignment.py").run()
    assert not at.exception, [e.value for e in at.exception]
    subheaders = [s.value for s in at.subheader]
    assert "int8 sensitivity per layer group" in subheaders
    assert "int8 ΔAP per layer group, on the evaluation images" in subheaders
    text = "\n".join(str(e.value) for kind in ("markdown", "caption") for e in at.get(kind))
    assert "92.2% of conv FLOPs int8" in text and "disappears when backbone.stage2 stays float" in text
    assert "75% of the int8 ΔAP (-0.0100) disappears when the head stays float" in text
    assert any("group" in df.value and "backbone.stage2" in df.value["group"].tolist() for df in at.dataframe)
    assert any("left float" in df.value and "head" in df.value["left float"].tolist() for df in at.dataframe)
    import json

    bars = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = [b for b in bars if b["layout"]["title"]["text"].startswith("what disappears")]
    assert len(bars) == 1 and bars[0]["data"][0]["x"][2] == "head"
    assert bars[0]["data"][0]["y"][2] == pytest.approx(0.75)


@needs_stack
@needs_rtx
@pytest.mark.slow
def test_tensorrt_runner_builds_an_int8_mixed_cell(tmp_path):
    """The TensorRT runner's int8-mixed path: sensitivity, mix, one Q/DQ graph, RTX engine."""
    from harness import matrix as mx
    from harness.backends.tensorrt import TensorRTRunner
    from harness.data.datasets import resolve_dataset
    from harness.runner.context import CellContext

    m = mx.parse({"models": [{"name": "yolov8_n", "checkpoint": "random"}], "backends": ["tensorrt"],
                  "precisions": ["int8-mixed"], "image_sizes": [64], "devices": ["cuda"],
                  "dataset": {"synth": {"images": 2, "seed": 2, "size": 96}},
                  "calibration": {"images": 2, "seed": 3, "sensitivity_images": 8}})
    cell = {**mx.expand(m)[0], "dataset": resolve_dataset(m.dataset, tmp_path)}
    assert cell["skip_reason"] is None
    runner = TensorRTRunner(cell, CellContext(cell, tmp_path, tmp_path))
    runner.build()
    facts = runner.info.facts
    assert "int8_mixed" in facts and facts["int8_sensitivity"]["rows"]
    assert facts["engine"]["engine_size"] > 0 and facts["engine"]["typing"] == "strong"


# ---------------------------------------------------------------- attribution on the evaluation images


class FakeEvalSplit(FakeEvaluator):
    """AP and differing detections additive over the groups still int8; no ONNX involved."""

    def __init__(self, losses, diffs, groups):
        super().__init__(losses, groups)
        self.diffs = diffs
        self.split = SimpleNamespace(source="evaluation split", images=100)
        self.match_iou, self.method = 0.5, "minmax"

    def evaluate(self, exclude):
        out = super().evaluate(exclude)
        if exclude is None:
            return {**out, "detections": 3000}
        float_groups = {g for g, nodes in self.groups.items() if nodes and set(nodes) <= set(exclude)}
        d = sum(v for g, v in self.diffs.items() if g not in float_groups)
        return {**out, "differences": d, "missing": d // 2, "extra": d - d // 2}


def _attribution():
    from harness.calibration.attribution import attribute

    groups = {"backbone.stem": ["b0"], "backbone.stage1": ["b1"], "neck.top_down_layers": ["n1"],
              "head.cls_preds.convs": ["h1"], "head.cls_preds.pred": ["h2"], "decode": []}
    flops = {"b0": 10.0, "b1": 40.0, "n1": 30.0, "h1": 15.0, "h2": 5.0}
    losses = {"backbone.stem": 0.001, "backbone.stage1": 0.001, "neck.top_down_layers": 0.0005,
              "head.cls_preds.convs": 0.0045, "head.cls_preds.pred": 0.003}  # the head: 75 % of 0.01
    diffs = {"backbone.stem": 100, "backbone.stage1": 100, "neck.top_down_layers": 200,
             "head.cls_preds.convs": 400, "head.cls_preds.pred": 200}
    table = {"rows": [{"group": "head.cls_preds.convs", "convs": 1, "rank": 1},
                      {"group": "head.cls_preds.pred", "convs": 1, "rank": 2},
                      {"group": "backbone.stem", "convs": 1, "rank": 3},
                      {"group": "neck.top_down_layers", "convs": 1, "rank": 4},
                      {"group": "decode", "convs": 0}]}
    mix = {"kept_float_groups": ["head.cls_preds.convs", "head.cls_preds.pred"]}
    return attribute(FakeEvalSplit(losses, diffs, groups), groups, flops, table, mix)


def test_evaluation_attribution_measures_parts_top_groups_and_the_mix():
    record = _attribution()
    assert record["int8_delta_ap"] == pytest.approx(-0.01) and record["int8_differences"] == 1000
    names = [(r["kind"], r["name"]) for r in record["rows"]]
    # parts, then the ranking's top 3; the mix equals the "head" part, so it is not measured twice
    assert names == [("part", "backbone"), ("part", "neck"), ("part", "head"),
                     ("group", "head.cls_preds.convs"), ("group", "head.cls_preds.pred"),
                     ("group", "backbone.stem")]
    head = record["rows"][2]
    assert head["groups"] == ["head.cls_preds.convs", "head.cls_preds.pred"]
    assert head["recovered_fraction"] == pytest.approx(0.75)
    assert head["differences_recovered_fraction"] == pytest.approx(0.6)
    assert head["flops_fraction"] == pytest.approx(0.2) and head["delta_ap"] == pytest.approx(-0.0025)


def test_evaluation_attribution_sentences_and_rows():
    from harness.calibration.attribution import lines, rows, summary_lines

    record = _attribution()
    text = lines(record)
    assert text[0] == ("75% of the int8 ΔAP (-0.0100) disappears when the head stays float (20.0% of "
                       "conv FLOPs; evaluation split, 100 images; 60% of the 1,000 differing detections too)")
    assert len(text) == 4
    table = rows(record)
    assert table[0]["left float"] == "nothing (the int8 graph)" and table[0]["differing detections"] == "1,000"
    assert table[3]["left float"] == "head" and table[3]["ΔAP removed"] == "75%"
    mix = {"ap_budget": 0.003, "met": True, "kept_float_groups": ["backbone.stage2"],
           "int8_conv_flops_fraction": 0.922}
    shown = summary_lines({"int8_mixed": mix, "int8_attribution": record})
    assert shown[0].startswith("mix: ΔAP budget 0.003 met on the sensitivity split; float: backbone.stage2")
    assert shown[1] == text[0]


def test_no_loss_is_said_plainly():
    from harness.calibration.attribution import lines

    record = {**_attribution(), "int8_delta_ap": 0.0004}
    assert lines(record)[0].startswith("int8 costs no AP on the evaluation split, 100 images (ΔAP +0.0004")


def test_compare_puts_the_evaluation_attribution_first():
    from harness.runner.compare import int8_layers

    layers = int8_layers({**_provenance(), "int8_attribution": _attribution()})
    assert layers["evaluation"]["rows"]
    assert layers["attribution"][0].startswith("75% of the int8 ΔAP (-0.0100) disappears when the head")
    assert any("sensitivity split, 64 images" in line for line in layers["attribution"])


def test_show_prints_where_an_int8_cells_ap_went(tmp_path):
    from harness.store import Store

    url = f"sqlite:///{tmp_path / 'show.db'}"
    key = "m/onnxruntime/int8-mixed/b1/s320/cpu/nms-none"
    with Store(url) as store:
        run_id = store.create_run(name="int8", matrix_path=None, matrix_hash="0", matrix_yaml="",
                                  git_sha=None, detbench_version="0", environment={},
                                  cells=[{"key": key, "position": 0, "model": "m", "backend": "onnxruntime",
                                          "precision": "int8-mixed", "batch": 1, "imgsz": 320,
                                          "device": "cpu", "nms": "none", "params": {}}])
        cell = store.cells(run_id)[0]
        store.record_result(cell.id, status="ok", metrics={"AP": 0.6},
                            provenance={**_provenance(), "int8_attribution": _attribution(),
                                        "calibration_method": "minmax", "calibration_images": 32})
    r = run_cli("show", "latest", "--db", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert f"{key}: 75% of the int8 ΔAP (-0.0100) disappears when the head stays float" in out
    assert f"{key}: mix: ΔAP budget 0.003 met" in out and "minmax · 32 img" in out


def test_study_cells_pair_with_their_own_calibration_point():
    """A calibration study's int8 cells differ in their point: the batch twin and the plain-int8
    twin of a mixed cell are those of the same point."""
    from harness.evaluate.alignment.pairing import batch_twin
    from harness.runner.compare import _mix_on_evaluation

    def cell(i, precision, batch, point, ap):
        return SimpleNamespace(id=i, key=f"k{i}", model="m", backend="onnxruntime", precision=precision,
                               batch=batch, imgsz=320, device="cpu", nms="none", status="ok",
                               metrics={"AP": ap}, params={"calibration_variant": point, "eval": {}})

    ref = cell(0, "fp32", 1, None, 0.60)
    cells = [ref, cell(1, "int8", 1, "minmax-32", 0.58), cell(2, "int8", 1, "mse-32", 0.59),
             cell(3, "int8", 8, "mse-32", 0.59), cell(4, "int8-mixed", 1, "mse-32", 0.595)]
    assert batch_twin(cells[3], cells).id == 2
    layers = {"mixed": {"kept_float_groups": ["neck"]}}
    line = _mix_on_evaluation(cells[4], ref, cells, layers)[0]
    assert "removes 50% of the int8 cell's ΔAP (-0.0100 -> -0.0050" in line


# ---------------------------------------------------------------- a mix given by name


def test_given_mix_counts_flops_and_names_unknown_groups():
    from harness.calibration.sensitivity import given_mix

    groups = {"backbone": ["b1", "b2"], "neck": ["n1"], "head.pred": ["h1"], "decode": []}
    flops = {"b1": 50.0, "b2": 30.0, "n1": 15.0, "h1": 5.0}
    mix = given_mix(groups, flops, ["neck", "head.pred"])
    assert mix["kept_float_nodes"] == ["h1", "n1"] and mix["int8_conv_flops_fraction"] == pytest.approx(0.8)
    assert mix["met"] is None and mix["source"] == "calibration.float_groups"
    with pytest.raises(UserError, match=r"calibration.float_groups: 'decode' is not a layer group with "
                                        r"convolutions in this model's graph; its groups: backbone, neck, head.pred"):
        given_mix(groups, flops, ["decode"])


@needs_stack
def test_int8_mixed_cell_with_given_float_groups_skips_the_search(tmp_path):
    from harness import matrix as mx
    from harness.backends.onnxruntime import OnnxRuntimeRunner
    from harness.data.datasets import resolve_dataset
    from harness.runner.context import CellContext

    m = mx.parse({"models": [{"name": "yolov8_n", "checkpoint": "random"}], "backends": ["onnxruntime"],
                  "precisions": ["int8-mixed"], "image_sizes": [64],
                  "dataset": {"synth": {"images": 2, "seed": 2, "size": 96}},
                  "calibration": {"images": 2, "seed": 3, "sensitivity": True,
                                  "float_groups": ["backbone.stem", "head.reg_preds.pred"]}})
    cell = {**mx.expand(m)[0], "dataset": resolve_dataset(m.dataset, tmp_path)}
    runner = OnnxRuntimeRunner(cell, CellContext(cell, tmp_path, tmp_path))
    runner.load()
    facts = runner.info.facts
    mix = facts["int8_mixed"]
    assert mix["kept_float_groups"] == ["backbone.stem", "head.reg_preds.pred"] and mix["met"] is None
    assert "int8_sensitivity" not in facts and "int8_attribution" not in facts  # no split, no search
    fed = _dq_fed(facts["model_file"])
    assert {n for n, q in fed.items() if not q} == set(mix["kept_float_nodes"]) and len(mix["kept_float_nodes"]) == 4
    assert not runner.info.warnings
    runner.close()


# ---------------------------------------------------------------- the conv-level step


class PerConvEvaluator:
    """AP = fp32 minus the loss of every Conv still int8 (additive per Conv), no ONNX involved."""

    def __init__(self, losses, fp32=0.60):
        self.losses, self.fp32, self.calls = losses, fp32, []

    def evaluate(self, exclude):
        self.calls.append(exclude)
        if exclude is None:
            return {"ap": self.fp32}
        return {"ap": self.fp32 - sum(v for n, v in self.losses.items() if n not in exclude)}


def _conv_level_search(losses, budget=0.003, min_int8_flops=0.8):
    from harness.calibration.sensitivity import search_mix

    # every group is too expensive (or too weak) to keep float, but the five cheap convs of the
    # backbone's late stage and the neck carry most of the loss: only a conv-level set meets it
    groups = {"backbone.early": ["e1", "e2"], "backbone.late": ["l1", "l2", "l3"], "neck": ["n1", "n2"],
              "head": ["h1"], "decode": []}
    flops = {"e1": 30.0, "e2": 20.0, "l1": 2.0, "l2": 3.0, "l3": 25.0, "n1": 4.0, "n2": 6.0, "h1": 10.0}
    ev = PerConvEvaluator(losses)
    full = ev.fp32 - sum(losses.values())
    rows = []
    for g, nodes in groups.items():
        if nodes:
            rec = ev.evaluate(frozenset(nodes))["ap"] - full
            rows.append({"group": g, "convs": len(nodes), "recovered_ap": rec})
    rows.sort(key=lambda r: -r["recovered_ap"])
    table = {"fp32_ap": ev.fp32, "int8_ap": full, "rows": rows + [{"group": "decode", "convs": 0}]}
    return search_mix(ev, table, groups, flops, budget, min_int8_flops), ev


def test_when_no_group_mix_meets_the_budget_the_cheapest_convs_are_tried():
    losses = {"e1": 0.0005, "e2": 0.0005, "l1": 0.002, "l2": 0.002, "l3": 0.001, "n1": 0.002, "n2": 0.002,
              "h1": 0.0005}
    mix, ev = _conv_level_search(losses)
    assert mix["met"] and mix["granularity"] == "conv" and mix["strategy"] == "cheapest convs first"
    # room 20 % of 100 FLOPs: 25 % of it (5) holds l1+l2; 50 % (10) l1, l2, n1 -> ΔAP -0.0045 misses;
    # all of it (20) l1, l2, n1, n2 (15 FLOPs; h1 would make 25) -> ΔAP -0.0025 meets
    assert mix["kept_float_nodes"] == ["l1", "l2", "n1", "n2"]
    assert mix["kept_float_groups"] == ["neck"] and mix["kept_float_partial_groups"] == {"backbone.late": 2}
    assert mix["int8_conv_flops_fraction"] == pytest.approx(0.85)
    assert mix["sensitivity_delta_ap"] == pytest.approx(-0.0025)
    steps = [s["action"] for s in mix["search"] if "cheapest" in s["action"]]
    assert steps == ["keep the 2 cheapest convs float (≤ 5.0% of conv FLOPs)",
                     "keep the 3 cheapest convs float (≤ 10.0% of conv FLOPs)",
                     "keep the 4 cheapest convs float (≤ 20.0% of conv FLOPs)"]
    from harness.calibration.sensitivity import float_text

    assert float_text(mix) == "the 4 cheapest convs (all of neck; part of backbone.late (2))"


def test_a_group_mix_that_meets_the_budget_needs_no_conv_level_step():
    losses = {"e1": 0.0, "e2": 0.0, "l1": 0.0, "l2": 0.0, "l3": 0.0, "n1": 0.002, "n2": 0.002, "h1": 0.0}
    mix, _ = _conv_level_search(losses)
    assert mix["met"] and mix["granularity"] == "group" and mix["kept_float_groups"] == ["neck"]
    assert not any("cheapest" in s["action"] for s in mix["search"])


def test_when_nothing_meets_the_budget_the_best_of_groups_and_conv_sets_is_kept():
    losses = {"e1": 0.004, "e2": 0.004, "l1": 0.001, "l2": 0.001, "l3": 0.004, "n1": 0.001, "n2": 0.001,
              "h1": 0.004}
    mix, _ = _conv_level_search(losses)
    assert not mix["met"] and "no mix met the budget" in mix["note"]
    # groups: head and neck float (20 % of FLOPs) leave ΔAP -0.014; the 4 cheapest convs -0.016
    assert mix["granularity"] == "group" and sorted(mix["kept_float_groups"]) == ["head", "neck"]
    assert mix["sensitivity_delta_ap"] == pytest.approx(-0.014)
    conv_steps = [s for s in mix["search"] if "cheapest" in s["action"]]
    assert len(conv_steps) == 3 and conv_steps[-1]["delta_ap"] == pytest.approx(-0.016)
    best = max((s for s in mix["search"] if s.get("criterion") is not None), key=lambda s: s["criterion"])
    assert mix["sensitivity_delta_ap"] == pytest.approx(best["delta_ap"])


def test_a_given_conv_level_mix_names_its_whole_and_partial_groups():
    from harness.calibration.sensitivity import float_text, given_mix

    groups = {"backbone.late": ["l1", "l2", "l3"], "neck": ["n1", "n2"], "decode": []}
    flops = {"l1": 10.0, "l2": 10.0, "l3": 30.0, "n1": 25.0, "n2": 25.0}
    mix = given_mix(groups, flops, [], ["l1", "n1", "n2"])
    assert mix["source"] == "calibration.float_convs" and mix["met"] is None
    assert mix["kept_float_nodes"] == ["l1", "n1", "n2"] and mix["granularity"] == "conv"
    assert mix["kept_float_groups"] == ["neck"] and mix["kept_float_partial_groups"] == {"backbone.late": 1}
    assert mix["int8_conv_flops_fraction"] == pytest.approx(0.4)
    assert float_text(mix) == "3 convs (all of neck; part of backbone.late (1))"
    both = given_mix(groups, flops, ["neck"], ["l1"])
    assert both["kept_float_nodes"] == ["l1", "n1", "n2"]
    assert both["source"] == "calibration.float_groups and calibration.float_convs"
    with pytest.raises(UserError, match=r"^calibration.float_convs: 'x9' is not a Conv node") as err:
        given_mix(groups, flops, [], ["l1", "x9"])
    assert "\n" not in str(err.value)
