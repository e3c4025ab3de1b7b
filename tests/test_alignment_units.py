"""Unit tests of the alignment analysis on small hand-made arrays (no detbench run)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import has_module
from harness.evaluate.alignment import analysis as an
from harness.evaluate.alignment.attribution import (Stage, attribute_chain, attribute_obvious,
                                                    output_stage)
from harness.evaluate.alignment.batch import batch_invariance
from harness.evaluate.alignment.detsets import Dets, from_coco
from harness.evaluate.alignment.histograms import histogram, iou_edges
from harness.evaluate.alignment.lint import cap_lint, keep_topk_lint, settings_lints
from harness.evaluate.alignment.matching import box_iou, class_flips, greedy_match
from harness.evaluate.alignment.pairing import batch_twin, reference_for
from harness.evaluate.alignment.settings import NmsSettings, effective_settings, replay_steps
from harness.evaluate.alignment.table import COLUMNS, row
from harness.evaluate.alignment.tensors import compare_decoded, error_stats

needs_mm = pytest.mark.skipif(not has_module("mmdet"), reason="replays need the mmyolo stack")

BASE = NmsSettings(score_thr=0.001, iou_thr=0.65, pre_topk=30000, keep_topk=100)


def dets(*rows):
    """rows of (x1, y1, x2, y2, score, label)."""
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return Dets.of(arr[:, :4], arr[:, 4], arr[:, 5])


# -- matching ------------------------------------------------------------------------------------

def test_box_iou_values_and_degenerate_identity():
    a = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [5, 5, 5, 5]], float)
    iou = box_iou(a, b)
    assert iou[0, 0] == 1 and iou[0, 1] == pytest.approx(50 / 150) and iou[0, 2] == 0
    assert iou[1, 2] == 1  # identical zero-area boxes are the same detection


def test_greedy_match_highest_score_first_and_by_class():
    ref = dets((0, 0, 10, 10, .9, 1), (0, 0, 10, 10, .8, 1), (20, 20, 30, 30, .7, 2))
    cand = dets((0, 0, 10, 11, .85, 1), (20, 20, 30, 30, .7, 1))
    m = greedy_match(ref, cand, 0.5)
    assert list(zip(m.a_idx, m.b_idx)) == [(0, 0)]  # the 0.9 one takes the only class-1 overlap
    assert list(m.unmatched_a) == [1, 2] and list(m.unmatched_b) == [1]
    assert m.ious[0] == pytest.approx(100 / 110)


def test_identical_detections_pair_first_and_score_tolerance():
    a = dets((0, 0, 10, 10, .5, 0), (0, 0, 10, 10, .5, 0))  # duplicates pair one to one
    assert len(greedy_match(a, a, 0.5).a_idx) == 2
    b = dets((0, 0, 10, 10, .5002, 0), (0, 0, 10, 10, .5, 0))
    strict = greedy_match(a, b, 0.99, max_score_delta=1e-4)
    assert len(strict.a_idx) == 1 and len(strict.unmatched_b) == 1


def test_class_flip_is_a_missing_extra_pair_of_other_classes():
    ref = dets((0, 0, 10, 10, .9, 1), (50, 50, 60, 60, .9, 1))
    cand = dets((0, 0, 10, 10, .9, 2), (80, 80, 90, 90, .9, 2))
    m = greedy_match(ref, cand, 0.5)
    assert class_flips(ref, cand, m, 0.5) == [(0, 0)]


def test_from_coco_groups_and_converts_xywh():
    got = from_coco([{"image_id": 3, "bbox": [1, 2, 3, 4], "score": .5, "category_id": 7}], [3, 4])
    assert got[3].boxes.tolist() == [[1, 2, 4, 6]] and got[3].labels.tolist() == [7]
    assert len(got[4]) == 0


# -- tensors, histograms, settings ---------------------------------------------------------------

def test_error_stats_and_per_image_alignment():
    ref = np.array([1.0, 2.0, 0.0])
    s = error_stats(ref, ref + np.array([0.0, 0.2, 1e-4]))
    assert s["max_abs"] == pytest.approx(0.2) and s["mean_abs"] == pytest.approx((0.2 + 1e-4) / 3)
    assert s["max_rel"] == pytest.approx(0.1) and 0.99 < s["cosine"] < 1
    r = {"image_ids": np.array([1, 2]), "boxes": np.zeros((2, 5, 4)), "scores": np.ones((2, 5, 3))}
    c = {"image_ids": np.array([2]), "boxes": np.zeros((1, 5, 4)), "scores": np.ones((1, 5, 3)) * 2}
    out = compare_decoded(r, c)
    assert out["images"] == 1 and out["per_image"][0]["image_id"] == 2
    assert out["scores"]["max_abs"] == 1 and out["scores"]["cosine"] == pytest.approx(1)
    c["scores"] = np.ones((1, 5, 80))
    assert not compare_decoded(r, c)["available"]


def test_histogram_clips_into_the_outer_bins():
    h = histogram([0.5, 0.95, 1.0, 0.2], iou_edges(0.5))
    assert h["edges"][0] == 0.5 and h["edges"][-1] == 1.0
    assert len(h["counts"]) == len(h["edges"]) - 1 and sum(h["counts"]) == 4


def test_effective_settings_of_in_graph_nms_and_replay_order():
    ev = {"score_thr": 0.001, "iou_thr": 0.7, "pre_topk": 30000, "keep_topk": 300, "multi_label": True}
    assert effective_settings("none", {"eval": ev}) == NmsSettings(0.001, 0.7, 30000, 300, True)
    onnx = effective_settings("onnx", {"eval": ev, "export": {"score_thr": 0.25, "pre_topk": 1000}})
    assert (onnx.score_thr, onnx.pre_topk) == (0.25, 1000)
    trt = effective_settings("onnx", {"eval": ev, "export": {"pre_topk": 30000}, "deploy_pre_topk": 3840})
    assert trt.pre_topk == 3840
    # BatchedNMS is fed at most 4096 boxes by the graph; EfficientNMS gets the graph's own pre-top-k
    assert effective_settings("batched_nms", {"eval": ev}).pre_topk == 4096
    assert effective_settings("efficient_nms", {"eval": ev, "export": {"pre_topk": 3840}}).pre_topk == 3840
    assert effective_settings("none", {"eval": {**ev, "pre_topk": -1}}).pre_topk is None
    cand = NmsSettings(0.25, 0.5, 3840, 100)
    steps = replay_steps(BASE, cand)
    assert [s for s, _ in steps] == ["pre_topk", "score_thr", "keep_topk", "iou_thr"]
    assert steps[0][1] == NmsSettings(0.001, 0.65, 3840, 100) and steps[-1][1] == cand


# -- attribution ---------------------------------------------------------------------------------

A, B, C = (0, 0, 10, 10, .9, 0), (20, 20, 30, 30, .5, 0), (40, 40, 50, 50, .4, 0)


def test_chain_blames_the_step_after_which_a_difference_persists():
    ref, cand = dets(A, B), dets(A, C)
    chain = [Stage("reference", "other", ref), Stage("reference_replay", "other", dets(A, B)),
             Stage("pre_topk", "pre_topk", dets(A, C)),        # B gone, C here ...
             Stage("score_thr", "score_thr", dets(A, B)),      # ... both back to the reference
             Stage("keep_topk", "keep_topk", dets(A)),         # B gone for good
             Stage("iou_thr", "nms", dets(A, C)),              # C here for good
             output_stage(False, cand)]
    att = attribute_chain(chain, greedy_match(ref, cand, 0.5), 0.5)
    assert att.missing == ["keep_topk"] and att.extra == ["nms"]
    assert att.missing_steps == ["keep_topk"] and att.extra_steps == ["iou_thr"]


def test_chain_residual_goes_to_the_output_stage():
    ref, cand = dets(A, B), dets(A)
    for in_graph, cause in ((True, "nms"), (False, "other")):
        chain = [Stage("reference", "other", ref), Stage("reference_replay", "other", ref),
                 output_stage(in_graph, cand)]
        assert attribute_chain(chain, greedy_match(ref, cand, 0.5), 0.5).missing == [cause]


def test_obvious_causes_without_tensors():
    ref = dets(A, (20, 20, 30, 30, .01, 0))
    cand = dets(A)
    strict = NmsSettings(0.05, 0.65, 30000, 100)
    att = attribute_obvious(ref, cand, greedy_match(ref, cand, .5), BASE, strict)
    assert att.missing == ["score_thr"]
    full = NmsSettings(0.001, 0.65, 30000, 1)  # the candidate's list is full at keep_topk 1
    assert attribute_obvious(ref, cand, greedy_match(ref, cand, .5), BASE, full).missing == ["keep_topk"]
    assert attribute_obvious(ref, cand, greedy_match(ref, cand, .5), BASE, BASE).missing == ["other"]


# -- batch invariance, lint, pairing ------------------------------------------------------------

def test_batch_invariance_flags_a_batch_dependent_output():
    base = {i: dets(A, B) for i in range(1, 6)}
    other = {i: dets(A, B) for i in range(1, 6)}
    other[2] = dets((0, 0, 10, 10.02, .90005, 0), B)  # within tolerance: IoU .998, Δscore 5e-5
    other[3] = dets((0, 0, 10, 10, .901, 0), B)        # score moved by 1e-3: batch-dependent
    other[5] = dets(A)                                  # a detection lost
    out = batch_invariance(base, other)
    assert out["images"] == 5 and out["images_differ"] == 2
    assert [w["image_id"] for w in out["worst_images"]] == [3, 5]  # 2 unmatched, then 1
    assert batch_invariance(base, base)["images_differ"] == 0


def test_lints():
    codes = [x["code"] for x in settings_lints(BASE, NmsSettings(0.25, 0.65, 3840, 100), "onnx")]
    assert codes == ["pre_topk_differs", "deploy_score_thr"]
    scores = np.zeros((3, 10, 2))
    scores[0, :, :] = 0.5  # 20 candidates
    scores[1, :3, 0] = 0.5  # 3 candidates
    lint = cap_lint(scores, NmsSettings(0.001, 0.65, 5, 100), "pre_topk_cap", "its")
    assert lint[0]["count"] == 1 and "up to 20" in lint[0]["message"]
    single = NmsSettings(0.001, 0.65, 5, 100, multi_label=False)  # priors, not pairs: 10 and 3
    assert cap_lint(scores, single, "c", "its")[0]["count"] == 1
    assert keep_topk_lint({1: dets(A, B), 2: dets(A)}, 2)[0]["count"] == 1


def cell(id_, backend="pytorch", precision="fp32", batch=1, status="ok", eval_=None, **kw):
    base = dict(id=id_, key=f"m/{backend}/{precision}/b{batch}/{kw.get('device', 'cpu')}",
                model="m", imgsz=320, device="cpu", nms="none", position=id_,
                params={"eval": eval_ or {}})
    base.update(kw)
    return SimpleNamespace(backend=backend, precision=precision, batch=batch, status=status, **base)


def test_reference_prefers_batch_1_then_the_smallest_batch():
    b4, b2, ort = cell(1, batch=4), cell(2, batch=2), cell(3, "onnxruntime")
    assert reference_for(ort, [b4, b2, ort])[0] is b2
    b1 = cell(4, batch=1)
    assert reference_for(ort, [b4, b2, ort, b1])[0] is b1
    failed = cell(5, status="failed")
    ref, why = reference_for(ort, [ort, failed])
    assert ref is None and "failed" in why
    assert "no pytorch fp32 cell" in reference_for(ort, [ort])[1]


def test_batch_twin_needs_the_same_eval_settings():
    b1, b4 = cell(1, "onnxruntime"), cell(2, "onnxruntime", batch=4)
    capped = cell(3, "onnxruntime", batch=2, eval_={"pre_topk": 3840})
    assert batch_twin(b4, [b1, b4, capped]) is b1
    assert batch_twin(capped, [b1, b4, capped]) is None and batch_twin(b1, [b1, b4]) is None


def test_table_row_and_stable_json():
    from harness.runner.compare import to_json

    rec = {"status": "ok", "cell": "c", "reference": "r", "matched_pct": 99.5, "missing": 1,
           "extra": 0, "attribution": {"pre_topk": 1}, "ap_delta": -0.001,
           "tensor_boxes_max_abs_err": None, "tensor_scores_max_abs_err": 1e-6,
           "lint": [{"code": "pre_topk_cap", "count": 3, "message": "m"}]}
    r = row(rec)
    assert set(r) == set(COLUMNS) and r["pre_topk"] == "1" and r["lint"] == "pre_topk_cap(3)"
    assert r["ΔAP"] == "-0.0010" and r["max abs err (boxes / scores)"] == "— / 1.00e-06"
    assert row({**rec, "reference": "m/pytorch/fp32/b1/s320/cpu/nms-none"})["reference"] == "pytorch/fp32/b1"
    assert row({"status": "no reference", "cell": "c", "reason": "why"})["reference"] == "why"
    text = to_json("run1", [rec])
    assert json.loads(text)["cells"][0]["cell"] == "c" and text == to_json("run1", [rec])


def test_compare_table_prints_rows_lint_and_notes(capsys):
    from harness.runner.compare import print_table

    print_table("run1", [{"status": "ok", "cell": "m/onnxruntime/fp32/b2", "reference": "m/pytorch/fp32/b1",
                          "attribution": {"pre_topk": 7}, "notes": ["a note"],
                          "lint": [{"code": "pre_topk_cap", "count": 2, "message": "2 images over"}]},
                         {"status": "no reference", "cell": "x/onnxruntime/fp32/b1", "reason": "no reference: why"}])
    out = capsys.readouterr().out
    assert "pre_topk_cap(2)" in out and "m/onnxruntime/fp32/b2: 2 images over" in out
    assert "a note" in out and "no reference: why" in out


# -- counterfactual replays on synthetic decoded tensors ----------------------------------------

def synthetic_decoded(images=4, priors=400, classes=3, seed=0):
    """Clusters of boxes around a few objects plus low-score background, like a detector's."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros((images, priors, 4), np.float32)
    scores = rng.uniform(1e-4, 2e-2, (images, priors, classes)).astype(np.float32)
    for i in range(images):
        centres = rng.uniform(40, 280, (priors, 2))
        sizes = rng.uniform(8, 60, (priors, 2))
        objects = rng.integers(0, 6, priors)  # 6 objects per image, the rest is background
        for k in range(6):
            near = objects == k
            centres[near] = rng.uniform(60, 260, 2) + rng.normal(0, 3, (near.sum(), 2))
            sizes[near] = rng.uniform(30, 80, 2) + rng.normal(0, 2, (near.sum(), 2))
            scores[i, near, k % classes] = rng.uniform(0.2, 0.9, near.sum())
        boxes[i] = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    metas = [{"img_id": i, "ori_shape": (320, 320), "img_shape": (320, 320),
              "scale_factor": (1.0, 1.0), "pad_param": [0.0, 0.0, 0.0, 0.0]} for i in range(images)]
    return {"image_ids": np.arange(images), "boxes": boxes, "scores": scores}, metas


def cell_data(key, decoded, metas, settings, detections=None, nms="none", tensors=True):
    from harness.evaluate.alignment.replay import Replayer

    replayer = Replayer(decoded, metas, [1, 2, 3])
    return an.CellData(key=key, nms=nms, settings=settings,
                       detections=detections if detections is not None else replayer(settings),
                       decoded=decoded if tensors else None, replayer=replayer if tensors else None)


@needs_mm
@pytest.mark.parametrize("change, cause", [({"pre_topk": 300}, "pre_topk"),
                                           ({"score_thr": 0.3}, "score_thr"),
                                           ({"keep_topk": 20}, "keep_topk"),
                                           ({"iou_thr": 0.3}, "nms")])
def test_a_settings_change_is_attributed_to_that_setting(change, cause):
    from dataclasses import replace

    decoded, metas = synthetic_decoded()
    ref_s = NmsSettings(0.001, 0.65, 30000, 1000)
    ref = cell_data("ref", decoded, metas, ref_s)
    cand = cell_data("cand", decoded, metas, replace(ref_s, **change))
    rec = an.analyse(ref, cand, 0.5)
    assert rec["missing"] + rec["extra"] > 0
    assert rec["attribution"][cause] == rec["missing"] + rec["extra"], rec["attribution"]
    assert rec["dominant_cause"] == cause and rec["tensor_scores_max_abs_err"] == 0


@needs_mm
def test_fp16_rounded_scores_are_attributed_to_numeric():
    decoded, metas = synthetic_decoded(images=6)
    settings = NmsSettings(0.001, 0.65, 30000, 40)  # the keep_topk cut falls among close scores
    perturbed = {**decoded, "scores": decoded["scores"].astype(np.float16).astype(np.float32)}
    ref = cell_data("ref", decoded, metas, settings)
    cand = cell_data("cand", perturbed, metas, settings)  # its detections: host_postprocess again
    rec = an.analyse(ref, cand, 0.5)
    assert rec["missing"] + rec["extra"] > 0
    assert rec["attribution"]["numeric"] == rec["missing"] + rec["extra"], rec["attribution"]
    assert 0 < rec["tensor_scores_max_abs_err"] < 1e-3 and rec["tensor_boxes_max_abs_err"] == 0
    assert sum(rec["score_delta_hist"]["counts"]) == rec["matched"]


@needs_mm
def test_in_graph_nms_residual_and_images_without_tensors():
    decoded, metas = synthetic_decoded()
    s = NmsSettings(0.001, 0.65, 30000, 1000)
    ref = cell_data("ref", decoded, metas, s)
    other_nms = ref.replayer(NmsSettings(0.001, 0.4, 30000, 1000))  # what a different NMS kept
    graph = cell_data("graph", decoded, metas, s, detections=other_nms, nms="onnx", tensors=False)
    rec = an.analyse(ref, graph, 0.5)
    assert rec["attribution"]["nms"] == rec["missing"] + rec["extra"] > 0
    assert rec["tensor"]["available"] is False
    ref_no_tensors = an.CellData("ref", "none", s, ref.detections)
    rec = an.analyse(ref_no_tensors, graph, 0.5)
    assert rec["images_replayed"] == 0 and rec["attribution"]["other"] == rec["missing"] + rec["extra"]
    assert any("without decoded tensors" in n for n in rec["notes"])


def test_store_keeps_alignment_and_a_rerun_clears_it(tmp_path):
    from harness.store import Store, current_revision, head_revision

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with Store(url) as store:
        run = store.create_run(name="n", matrix_path=None, matrix_hash="h", matrix_yaml="",
                               git_sha=None, detbench_version="0", environment={},
                               cells=[dict(key=f"k{i}", model="m", backend="b", precision="fp32",
                                           batch=1, imgsz=320, device="cpu") for i in range(2)])
        c1, c2 = store.cells(run)
        assert store.alignment(c1.id) is None and store.alignments(run) == {}
        store.record_alignment(c2.id, {"status": "ok", "matched": 3})
        assert store.alignment(c2.id) == {"status": "ok", "matched": 3}
        assert store.alignments(run) == {c2.id: {"status": "ok", "matched": 3}}
        store.mark_running(c2.id)  # a rerun forgets the old analysis with the old results
        assert store.alignment(c2.id) is None
    assert current_revision(url) == head_revision() == "0002"


def test_upgrade_from_0001_adds_the_column(tmp_path):
    from alembic import command

    from harness.store import Store, migrate, upgrade
    from harness.store.engine import open_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = open_engine(url, create=True, readonly=False)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0001")
    engine.dispose()
    assert upgrade(url) == "0002"
    with Store(url) as store:
        assert store.is_empty()
