"""Rotated mAP against independent computations: pycocotools, a shapely reimplementation, hand cases."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="rotated IoU is torch code")
import shapely  # noqa: E402  (the exact polygon oracle; a dev dependency, never skipped)
from shapely import affinity  # noqa: E402
from shapely.geometry import box as shapely_box  # noqa: E402

from harness.evaluate.rotated_map import STAT_NAMES, coco_rotated_ap, dota_map  # noqa: E402

PI = math.pi


# --- data --------------------------------------------------------------------------------------

def axis_aligned_scene(seed, images=24, classes=3, crowd=0.06, difficult=0.0, many=True, regions=False):
    """Random GTs of all COCO sizes and detections around them (duplicates, wrong class,
    background), angle 0; one image holds > 100 detections (maxDets).  ``regions``: a crowd
    region around some GTs, so that detections overlap a regular and an ignored GT."""
    g = np.random.default_rng(seed)
    gts, dets = {}, {}
    for img in range(1, images + 1):
        n = int(g.integers(0, 9))
        wh = np.exp(g.uniform(np.log(4), np.log(250), (n, 2)))
        ctr = g.uniform(0, 640, (n, 2))
        gb = np.concatenate([ctr, wh, np.zeros((n, 1))], 1)
        gl = g.integers(0, classes, n)
        iscrowd = g.uniform(0, 1, n) < crowd
        if regions and n:
            sel = g.uniform(0, 1, n) < 0.5
            around = gb[sel].copy()
            around[:, :2] += g.uniform(-0.5, 0.5, (len(around), 2)) * around[:, 2:4]
            around[:, 2:4] *= g.uniform(1.5, 3, (len(around), 2))
            gb, gl = np.concatenate([gb, around]), np.concatenate([gl, gl[sel]])
            iscrowd = np.concatenate([iscrowd, np.ones(len(around), dtype=bool)])
        gts[img] = {"rboxes": gb, "labels": gl, "difficult": g.uniform(0, 1, len(gb)) < difficult,
                    "iscrowd": iscrowd}
        db, dl = [], []
        for b, lab in zip(gb[:n], gl[:n]):
            for _ in range(int(g.integers(0, 4))):
                j = b.copy()
                j[:2] += g.normal(0, 0.05, 2) * b[2:4]
                j[2:4] *= np.exp(g.normal(0, 0.08, 2))
                db.append(j)
                dl.append(lab if g.uniform() < 0.85 else g.integers(0, classes))
        for _ in range(int(g.integers(0, 5)) + (110 if (many and img == 3) else 0)):
            db.append(np.array([*g.uniform(0, 640, 2), *np.exp(g.uniform(np.log(4), np.log(200), 2)), 0.0]))
            dl.append(g.integers(0, classes))
        db = np.array(db).reshape(-1, 5)
        dets[img] = {"rboxes": db, "scores": g.uniform(0.01, 1.0, len(db)), "labels": np.array(dl, dtype=int)}
    return dets, gts


def rotated_scene(seed, images=10, classes=3):
    """Random rotated GTs and detections around them; some GTs difficult."""
    g = np.random.default_rng(seed)
    gts, dets = {}, {}
    for img in range(images):
        n = int(g.integers(0, 7))
        gb = np.concatenate([g.uniform(0, 300, (n, 2)), g.uniform(5, 60, (n, 2)),
                             g.uniform(-PI / 2, PI / 2, (n, 1))], 1)
        gl = g.integers(0, classes, n)
        gts[img] = {"rboxes": gb, "labels": gl, "difficult": g.uniform(0, 1, n) < 0.2}
        db, dl = [], []
        for b, lab in zip(gb, gl):
            for _ in range(int(g.integers(0, 4))):
                j = b.copy()
                j[:2] += g.normal(0, 0.06, 2) * b[2:4].min()
                j[2:4] *= np.exp(g.normal(0, 0.06, 2))
                j[4] += g.normal(0, 0.05)
                db.append(j)
                dl.append(lab if g.uniform() < 0.9 else g.integers(0, classes))
        for _ in range(int(g.integers(0, 4))):
            db.append(np.array([*g.uniform(0, 300, 2), *g.uniform(5, 60, 2), g.uniform(-PI / 2, PI / 2)]))
            dl.append(g.integers(0, classes))
        db = np.array(db).reshape(-1, 5)
        dets[img] = {"rboxes": db, "scores": np.round(g.uniform(0.01, 1.0, len(db)), 2),  # ties
                     "labels": np.array(dl, dtype=int)}
    return dets, gts


def pycocotools_eval(dets, gts, classes=3):
    """The reference: pycocotools' bbox COCOeval on the same axis-aligned boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0] - b[2] / 2), float(b[1] - b[3] / 2), float(b[2]), float(b[3])]

    anns, aid = [], 1
    for img, g in gts.items():
        for b, lab, crowd in zip(g["rboxes"], g["labels"], g["iscrowd"]):
            anns.append({"id": aid, "image_id": img, "category_id": int(lab) + 1, "bbox": xywh(b),
                         "area": float(b[2] * b[3]), "iscrowd": int(crowd)})
            aid += 1
    results = [{"image_id": img, "category_id": int(lab) + 1, "bbox": xywh(b), "score": float(s)}
               for img, d in dets.items() for b, s, lab in zip(d["rboxes"], d["scores"], d["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in gts], "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# --- COCO-style against pycocotools --------------------------------------------------------------

@pytest.mark.parametrize("seed,regions", [(0, False), (1, True)])
def test_coco_axis_aligned_equals_pycocotools(seed, regions):
    dets, gts = axis_aligned_scene(seed, regions=regions)
    ev = pycocotools_eval(dets, gts)
    got = coco_rotated_ap(dets, gts, classes=range(3))
    ref_stats = {n: (None if v < 0 else float(v)) for n, v in zip(STAT_NAMES, ev.stats)}
    assert set(got["stats"]) == set(ref_stats)
    for name, ref in ref_stats.items():
        assert (got["stats"][name] is None) == (ref is None), name
        if ref is not None:
            assert got["stats"][name] == pytest.approx(ref, abs=1e-6), name
    assert all(0.05 < v < 0.95 for v in got["stats"].values())  # every statistic is defined and open
    np.testing.assert_allclose(got["precision"], ev.eval["precision"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["recall"], ev.eval["recall"], rtol=0, atol=1e-6)
    for k in range(3):
        p = ev.eval["precision"][:, :, k, 0, -1]
        assert got["per_class"][k]["ap"] == pytest.approx(p[p > -1].mean(), abs=1e-6)
        assert got["per_class"][k]["ap50"] == pytest.approx(p[0][p[0] > -1].mean(), abs=1e-6)


def test_coco_equal_iou_goes_to_the_last_gt_as_in_pycocotools():
    # d1 sits symmetrically between G0 and G1 (IoU 0.6 with both, exact in binary); pycocotools
    # gives it to the last of equal candidates, G1, which leaves G0 free for d2
    gts = {1: {"rboxes": np.array([[8.0, 8, 16, 16, 0], [16.0, 8, 16, 16, 0]]), "labels": np.array([0, 0]),
               "difficult": np.zeros(2, bool), "iscrowd": np.zeros(2, bool)}}
    dets = {1: {"rboxes": np.array([[12.0, 8, 16, 16, 0], [6.0, 8, 16, 16, 0]]), "scores": np.array([0.9, 0.8]),
                "labels": np.array([0, 0])}}
    ev = pycocotools_eval(dets, gts, classes=1)
    got = coco_rotated_ap(dets, gts)
    np.testing.assert_allclose(got["precision"], ev.eval["precision"], rtol=0, atol=1e-12)
    assert got["stats"]["AP50"] == pytest.approx(1.0)


def rotate_scene(dets, gts, phi, origin=(320.0, 320.0)):
    """The same scene turned by phi about origin: every IoU and area is unchanged."""
    c, s = math.cos(phi), math.sin(phi)

    def turn(b):
        b = b.copy()
        x, y = b[:, 0] - origin[0], b[:, 1] - origin[1]
        b[:, 0], b[:, 1] = origin[0] + c * x - s * y, origin[1] + s * x + c * y
        b[:, 4] += phi
        return b

    return ({i: {**d, "rboxes": turn(d["rboxes"])} for i, d in dets.items()},
            {i: {**g, "rboxes": turn(g["rboxes"])} for i, g in gts.items()})


def test_coco_rotated_scene_equals_pycocotools_on_the_unrotated_one():
    dets, gts = axis_aligned_scene(2, images=12)
    ev = pycocotools_eval(dets, gts)
    got = coco_rotated_ap(*rotate_scene(dets, gts, 0.37), classes=range(3))
    np.testing.assert_allclose(got["precision"], ev.eval["precision"], rtol=0, atol=1e-6)
    assert got["stats"]["AP"] == pytest.approx(ev.stats[0], abs=1e-6)


def test_coco_difficult_gt_is_ignored():
    box = np.array([[50.0, 50, 40, 20, 0.3], [200.0, 80, 30, 30, -0.7]])
    gts = {1: {"rboxes": box, "labels": np.array([0, 0]), "difficult": np.array([False, True])}}
    # the best detection sits on the difficult GT: it is ignored, not a TP, not an FP
    dets = {1: {"rboxes": np.array([box[1], box[0], [400.0, 400, 10, 10, 0]]),
                "scores": np.array([0.9, 0.8, 0.7]), "labels": np.array([0, 0, 0])}}
    got = coco_rotated_ap(dets, gts)
    assert got["stats"]["AP"] == pytest.approx(1.0)  # TP at precision 1, then the FP after full recall
    assert got["stats"]["AR100"] == pytest.approx(1.0)
    dets[1]["scores"] = np.array([0.7, 0.8, 0.9])  # now the FP comes first: FP, TP, (ignored)
    assert coco_rotated_ap(dets, gts)["stats"]["AP"] == pytest.approx(0.5)
    gts[1]["difficult"] = np.array([False, False])  # as a regular GT: FP, TP, TP over 2 GTs
    assert coco_rotated_ap(dets, gts)["stats"]["AP"] == pytest.approx(2 / 3)


# --- DOTA-style ----------------------------------------------------------------------------------

def test_dota_hand_computed():
    g1, g2, g3 = [50.0, 50, 20, 10, 0], [150.0, 50, 20, 10, 0.3], [50.0, 50, 30, 10, 0.5]
    gts = {"A": {"rboxes": np.array([g1, g2]), "labels": np.array([0, 0]),
                 "difficult": np.array([False, True])},
           "B": {"rboxes": np.array([g3, [9.0, 9, 4, 4, 0]]), "labels": np.array([0, 1]),
                 "difficult": np.array([False, False])}}
    dets = {"A": {"rboxes": np.array([g1, g1, g2]), "scores": np.array([0.9, 0.8, 0.7]),
                  "labels": np.array([0, 0, 0])},
            "B": {"rboxes": np.array([g3, [250.0, 250, 10, 10, 0], [9.0, 9, 4, 4, 0]]),
                  "scores": np.array([0.6, 0.5, 0.4]), "labels": np.array([0, 0, 2])}}
    # class 0 in score order: TP, FP (duplicate), ignored (difficult), TP, FP; 2 GTs
    # -> (recall, precision): (.5, 1), (.5, .5), (.5, .5), (1, 2/3), (1, .5)
    voc07 = dota_map(dets, gts, use_07_metric=True)
    assert voc07["per_class"][0]["ap"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert voc07["per_class"][0]["num_gts"] == 2 and voc07["per_class"][0]["num_dets"] == 5
    assert voc07["per_class"][1] == {"ap": 0.0, "num_gts": 1, "num_dets": 0, "recall": 0.0}
    assert voc07["per_class"][2]["ap"] is None  # detections but no GT: out of the mean
    assert voc07["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11 / 2)
    area = dota_map(dets, gts, use_07_metric=False)
    assert area["per_class"][0]["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert area["metric"] == "area" and voc07["metric"] == "voc07_11point"


def test_dota_argmax_gt_taken_is_a_false_positive():
    # VOC rule: a detection goes to its highest-IoU GT; if that one is taken, it is an FP even
    # though another GT also overlaps enough
    a, b = [50.0, 50, 40, 40, 0], [58.0, 50, 40, 40, 0]
    gts = {0: {"rboxes": np.array([a, b]), "labels": np.array([0, 0]), "difficult": np.array([False, False])}}
    dets = {0: {"rboxes": np.array([a, [51.0, 50, 40, 40, 0]]), "scores": np.array([0.9, 0.8]),
                "labels": np.array([0, 0])}}
    r = dota_map(dets, gts, use_07_metric=False)["per_class"][0]
    assert r["recall"] == 0.5 and r["ap"] == pytest.approx(0.5)


def shapely_polygon(b):
    cx, cy, w, h, a = (float(v) for v in b)
    return affinity.rotate(shapely_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), a,
                           origin=(cx, cy), use_radians=True)


def dota_reference(dets, gts, iou_thr, use_07):
    """Straightforward reimplementation: shapely IoU, plain loops, mmrotate's VOC rules."""
    labels = sorted({int(x) for part in (*dets.values(), *gts.values()) for x in part["labels"]})
    aps = {}
    for c in labels:
        records, npos = [], 0  # (score, tp, fp)
        for img, g in gts.items():
            gpolys = [(shapely_polygon(b), bool(dif)) for b, lab, dif
                      in zip(g["rboxes"], g["labels"], g["difficult"]) if lab == c]
            npos += sum(1 for _, dif in gpolys if not dif)
            d = dets.get(img, {"rboxes": [], "scores": [], "labels": []})
            mine = sorted([(float(s), shapely_polygon(b)) for b, s, lab
                           in zip(d["rboxes"], d["scores"], d["labels"]) if lab == c], key=lambda t: -t[0])
            taken = [False] * len(gpolys)
            for score, p in mine:
                best, arg = -1.0, -1
                for gi, (q, _) in enumerate(gpolys):
                    inter = p.intersection(q).area
                    iou = inter / (p.area + q.area - inter)
                    if iou > best:
                        best, arg = iou, gi
                if arg >= 0 and best >= iou_thr:
                    if gpolys[arg][1]:
                        records.append((score, 0, 0))
                    elif taken[arg]:
                        records.append((score, 0, 1))
                    else:
                        taken[arg] = True
                        records.append((score, 1, 0))
                else:
                    records.append((score, 0, 1))
        if npos == 0:
            continue
        records.sort(key=lambda t: -t[0])
        tp = fp = 0
        rec, prec = [], []
        for _, t, f in records:
            tp, fp = tp + t, fp + f
            rec.append(tp / npos)
            prec.append(tp / max(tp + fp, np.finfo(np.float32).eps))
        if use_07:
            # DOTA devkit and mmdet sample at np.arange(0, 1.1, 0.1), whose 0.3, 0.6 and 0.7 are a
            # hair above those numbers: a recall of exactly 0.3 does not reach the point "0.3"
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                ps = [p for r, p in zip(rec, prec) if r >= t]
                ap += max(ps) if ps else 0.0
            ap /= 11
        else:
            mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))
        aps[c] = ap
    return aps


@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("iou_thr", [0.5, 0.7])
def test_dota_equals_shapely_reimplementation(use_07, iou_thr):
    dets, gts = rotated_scene(3)
    got = dota_map(dets, gts, iou_thr=iou_thr, use_07_metric=use_07)
    ref = dota_reference(dets, gts, iou_thr, use_07)
    assert {c for c, v in got["per_class"].items() if v["ap"] is not None} == set(ref)
    for c, ap in ref.items():
        assert got["per_class"][c]["ap"] == pytest.approx(ap, abs=1e-12)
    assert got["mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)
    assert 0.2 < got["mAP"] < 0.95


# --- representation invariance, inputs -----------------------------------------------------------

def test_ninety_degree_symmetric_representations_give_identical_ap():
    dets, gts = rotated_scene(4)

    def swap(b):
        b = b[:, [0, 1, 3, 2, 4]].copy()
        b[:, 4] += np.where(np.arange(len(b)) % 2 == 0, PI / 2, -PI / 2)
        return b

    dets2 = {i: {**d, "rboxes": swap(d["rboxes"])} for i, d in dets.items()}
    gts2 = {i: {**g, "rboxes": swap(g["rboxes"])} for i, g in gts.items()}
    for use_07 in (True, False):
        a, b = dota_map(dets, gts, use_07_metric=use_07), dota_map(dets2, gts2, use_07_metric=use_07)
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12) and a["mAP"] > 0.2
        for c in a["per_class"]:
            assert a["per_class"][c] == pytest.approx(b["per_class"][c], abs=1e-12)
    a, b = coco_rotated_ap(dets, gts), coco_rotated_ap(dets2, gts2)
    np.testing.assert_allclose(a["precision"], b["precision"], rtol=0, atol=1e-12)
    assert a["stats"] == pytest.approx(b["stats"]) and a["stats"]["AP"] > 0.1


def test_empty_inputs_and_errors():
    gts = {0: {"rboxes": np.zeros((0, 5)), "labels": np.zeros(0, int), "difficult": np.zeros(0, bool)}}
    assert dota_map({}, gts)["mAP"] is None
    assert coco_rotated_ap({}, gts)["stats"]["AP"] is None
    gts[1] = {"rboxes": np.array([[5.0, 5, 4, 2, 0]]), "labels": np.array([0]), "difficult": np.array([False])}
    assert dota_map({}, gts)["mAP"] == 0.0
    assert coco_rotated_ap({}, gts)["stats"]["AP"] == 0.0
    with pytest.raises(ValueError, match="image 7.*no ground-truth entry"):
        dota_map({7: {"rboxes": np.zeros((0, 5)), "scores": [], "labels": []}}, gts)
    with pytest.raises(ValueError, match=r"'rboxes' must be \[N, 5\]"):
        coco_rotated_ap({}, {0: {"rboxes": np.zeros((2, 4)), "labels": [0, 0]}})
    with pytest.raises(ValueError, match="'scores' has shape"):
        dota_map({1: {"rboxes": np.zeros((2, 5)), "scores": [0.5], "labels": [0, 0]}}, gts)
