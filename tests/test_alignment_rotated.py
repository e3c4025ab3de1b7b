"""Alignment of rotated cells (#19): matching by rotated IoU, angle / centre-shift histograms,
rotated detections.json, and no comparison across box types (hand-made arrays, no detbench run)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from shapely.geometry import Polygon

from harness.evaluate.alignment import analysis as an
from harness.evaluate.alignment.batch import batch_invariance
from harness.evaluate.alignment.detsets import Dets, from_coco
from harness.evaluate.alignment.histograms import ANGLE_DELTA_EDGES, angle_deltas_deg
from harness.evaluate.alignment.matching import box_iou, class_flips, greedy_match
from harness.evaluate.alignment.settings import NmsSettings, effective_settings
from harness.evaluate.rotated_eval import enclosing_xywh, to_rotated_coco_detections

S = NmsSettings(0.05, 0.1, 2000, 200, rotated=True)


def rdets(*rows):
    """rows of (cx, cy, w, h, angle, score, label)."""
    arr = np.array(rows, dtype=np.float64).reshape(-1, 7)
    return Dets.of(arr[:, :5], arr[:, 5], arr[:, 6], dim=5)


def poly(cx, cy, w, h, a):
    u = np.array([math.cos(a), math.sin(a)]) * w / 2
    v = np.array([-math.sin(a), math.cos(a)]) * h / 2
    c = np.array([cx, cy])
    return Polygon([c + u + v, c + u - v, c - u - v, c - u + v])


def shapely_iou(a, b):
    pa, pb = poly(*a), poly(*b)
    union = pa.union(pb).area
    return pa.intersection(pb).area / union if union > 0 else 0.0


def test_rotated_iou_matches_shapely_and_identity_of_degenerate_boxes():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(20, 40, 6), rng.uniform(20, 40, 6), rng.uniform(5, 30, 6),
                         rng.uniform(2, 10, 6), rng.uniform(-math.pi / 2, math.pi / 2, 6)])
    b = a + rng.normal(0, [2, 2, 2, 1, 0.2], a.shape)
    iou = box_iou(a, b)
    want = np.array([[shapely_iou(x, y) for y in b] for x in a])
    assert iou.shape == (6, 6) and np.abs(iou - want).max() < 1e-9
    flat = np.array([[10, 10, 0, 4, 0.3]], float)  # zero area: IoU 0 with others, 1 with itself
    assert box_iou(flat, flat)[0, 0] == 1 and box_iou(flat, a)[0].max() == 0


def test_crossing_thin_boxes_overlap_as_enclosing_boxes_but_do_not_match():
    ref = rdets((50, 50, 60, 6, math.pi / 4, .9, 1))
    cand = rdets((50, 50, 60, 6, -math.pi / 4, .9, 1))  # an X: the same enclosing square
    hbox = lambda d: np.array([[x, y, x + w, y + h] for x, y, w, h in map(enclosing_xywh, d.boxes)])
    assert box_iou(hbox(ref), hbox(cand))[0, 0] > 0.99  # axis-aligned, they would match
    m = greedy_match(ref, cand, 0.5)
    assert len(m.a_idx) == 0 and list(m.unmatched_a) == [0] and list(m.unmatched_b) == [0]
    assert box_iou(ref.boxes, cand.boxes)[0, 0] == pytest.approx(shapely_iou(ref.boxes[0], cand.boxes[0]))


def test_angles_wrap_modulo_180_degrees_in_matching_and_histograms():
    # -88 degrees and +89 degrees are boxes 3 degrees apart
    ref = rdets((40, 40, 30, 8, math.radians(-88), .8, 2))
    cand = rdets((40.5, 40, 30, 8, math.radians(89), .79, 2))
    m = greedy_match(ref, cand, 0.5)
    assert len(m.a_idx) == 1 and m.ious[0] > 0.6
    assert angle_deltas_deg([math.radians(-88)], [math.radians(89)])[0] == pytest.approx(-3.0)
    assert angle_deltas_deg([0.0], [math.radians(90)])[0] == pytest.approx(-90.0)  # [-90, 90)


def test_analyse_rotated_cells_adds_angle_and_centre_histograms():
    ref = {1: rdets((40, 40, 30, 8, 0.1, .9, 1), (100, 60, 40, 12, -1.2, .8, 2)),
           2: rdets((70, 70, 30, 6, 0.5, .7, 1))}
    cand = {1: rdets((40, 40, 30, 8, 0.1 + math.radians(0.05), .9, 1),
                     (100.3, 60.4, 40, 12, -1.2, .8, 2)),
            2: rdets((70, 70, 30, 6, 0.5 + math.radians(60), .7, 1))}  # IoU < 0.5: missing + extra
    rec = an.analyse(an.CellData("ref", "none", S, ref, box_type="rotated"),
                     an.CellData("cand", "none", S, cand, box_type="rotated"), 0.5)
    assert rec["box_type"] == "rotated" and rec["iou"] == "rotated"
    assert rec["matched"] == 2 and rec["missing"] == 1 and rec["extra"] == 1
    angles, shifts = rec["angle_delta_hist"], rec["center_shift_hist"]
    assert angles["edges"] == list(ANGLE_DELTA_EDGES) and sum(angles["counts"]) == 2
    bins = np.digitize([0.0, 0.05], ANGLE_DELTA_EDGES) - 1  # the exact pair and the 0.05 degree one
    assert [angles["counts"][b] for b in bins] == [1, 1]
    assert sum(shifts["counts"]) == 2 and shifts["counts"][0] == 1  # 0 px, and a 0.5 px shift
    assert rec["settings"]["candidate"]["rotated"] is True


def test_horizontal_records_keep_their_shape():
    h = Dets.of([[0, 0, 10, 10]], [.9], [1])
    rec = an.analyse(an.CellData("r", "none", NmsSettings(.05, .5, 100, 10), {1: h}),
                     an.CellData("c", "none", NmsSettings(.05, .5, 100, 10), {1: h}), 0.5)
    assert "angle_delta_hist" not in rec and "box_type" not in rec
    assert "rotated" not in rec["settings"]["reference"]


def test_class_flips_and_batch_invariance_on_rotated_sets():
    a = rdets((40, 40, 30, 8, 0.3, .9, 1))
    b = rdets((40, 40, 30, 8, 0.3, .9, 2))
    m = greedy_match(a, b, 0.5)
    assert class_flips(a, b, m, 0.5) == [(0, 0)]
    out = batch_invariance({1: a, 2: a}, {1: a, 2: rdets((40, 40, 30, 8, 0.35, .9, 1))})
    assert out["images_differ"] == 1 and out["worst_images"][0]["image_id"] == 2
    assert batch_invariance({1: a}, {1: Dets.empty(5)})["images_differ"] == 1


def test_rotated_detections_json_round_trip():
    rb = np.array([[50.12345, 40.0, 30.0, 10.0, 0.123456789], [10, 10, 4, 2, -1.5]])
    entries, dropped = to_rotated_coco_detections(7, rb, np.array([.9, .4]), np.array([0, 5]), [3, 4])
    assert dropped == 1 and len(entries) == 1
    e = entries[0]
    assert e["category_id"] == 3 and e["rbox"] == [50.123, 40.0, 30.0, 10.0, 0.123457]
    x, y, w, h = e["bbox"]  # the enclosing box of the 4 corners
    corners = np.array(poly(*e["rbox"]).exterior.coords)
    assert [x, y, x + w, y + h] == pytest.approx([*corners.min(0), *corners.max(0)], abs=1e-3)
    got = from_coco(entries, [7, 8])
    assert got[7].rotated and got[7].boxes.tolist() == [e["rbox"]]
    assert got[8].boxes.shape == (0, 5)  # an image without detections is still rotated
    assert from_coco([], [1], rotated=True)[1].boxes.shape == (0, 5)


def test_rotated_settings_replay_rotated_nms():
    s = effective_settings("none", {"eval": {"score_thr": .05, "iou_thr": .1, "pre_topk": 2000,
                                             "keep_topk": 200}}, rotated=True)
    assert s.rotated and s.test_cfg()["nms"]["type"] == "nms_rotated"
    assert effective_settings("none", {"eval": {"iou_thr": .7}}).test_cfg()["nms"]["type"] == "nms"


def test_compare_never_pairs_a_rotated_cell_with_a_horizontal_reference():
    from harness.runner.compare import _record, box_type

    def cell(key, kind, where="metrics"):
        metrics = {"AP": .5, **({"box_type": kind} if where == "metrics" else {})}
        params = {"box_type": kind} if where == "params" else {}
        return SimpleNamespace(key=key, id=hash(key), metrics=metrics, params=params, status="ok",
                               model="m", backend="onnxruntime", precision="fp32", imgsz=320,
                               device="cpu", nms="none", batch=1, provenance={})

    ref, cand = cell("ref", "horizontal"), cell("cand", "rotated", where="params")
    assert box_type(ref) == "horizontal" and box_type(cand) == "rotated"
    assert box_type(SimpleNamespace(metrics=None, params={})) == "horizontal"  # stored before #19
    rec = _record(loader=None, cell=cand, ref=ref, reason=None, cells=[ref, cand])
    assert rec["status"] == "no reference" and "not comparable" in rec["reason"]


def test_compare_prints_the_rotated_pairs_in_words():
    from harness.runner.compare import rotated_summary

    ref = {1: rdets((40, 40, 30, 8, 0.1, .9, 1), (90, 60, 40, 12, -1.2, .8, 2))}
    cand = {1: rdets((40, 40, 30, 8, 0.1 + math.radians(2), .9, 1), (90, 60, 40, 12, -1.2, .8, 2))}
    rec = an.analyse(an.CellData("ref", "none", S, ref, box_type="rotated"),
                     an.CellData("cand", "none", S, cand, box_type="rotated"), 0.5)
    assert rotated_summary(rec) == ["rotated boxes, matched by rotated IoU: 2 pairs; angle within "
                                    "±0.001° for 1, ≥ 1° off for 1; centre moved < 0.002 px for 2"]
    assert rotated_summary({"box_type": "horizontal"}) == []
