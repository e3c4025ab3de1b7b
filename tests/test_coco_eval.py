"""faster-coco-eval (optional evaluator) equals pycocotools, the reference, to 1e-6."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ROOT, has_module

FIXTURE = ROOT / "fixtures" / "yolov8_synth"


def _compare(ann, detections, ids):
    from harness.evaluate.coco_eval import evaluate

    ref = evaluate(ann, detections, ids, evaluator="pycocotools")
    fast = evaluate(ann, detections, ids, evaluator="faster-coco-eval")
    assert fast["evaluator"] == "faster-coco-eval"
    assert ref["stats"].keys() == fast["stats"].keys() and len(ref["stats"]) == 12
    for name in ref["stats"]:
        assert fast["stats"][name] == pytest.approx(ref["stats"][name], abs=1e-6), name
    assert [c["class_name"] for c in fast["per_class"]] == [c["class_name"] for c in ref["per_class"]]
    for a, b in zip(ref["per_class"], fast["per_class"]):
        assert b["ap"] == pytest.approx(a["ap"], abs=1e-6) and b["ap50"] == pytest.approx(a["ap50"], abs=1e-6)
    return ref


@pytest.mark.skipif(not (has_module("mmyolo") and has_module("faster_coco_eval")),
                    reason="needs the mmyolo stack and faster-coco-eval (extras mmyolo, fast-eval)")
def test_fixture_detections_equal(tmp_path):
    """The trained fixture's detections on 24 synthetic images, through both evaluators."""
    import cv2
    import torch

    from harness.data.coco import CocoDataset
    from harness.data.synth import generate
    from harness.evaluate.coco_eval import to_coco_detections
    from harness.export.deploy import DeployModel
    from harness.export.host_nms import host_postprocess
    from harness.models.mmyolo_build import build_model, load_config, prepare_mm
    from harness.models.preprocess import Preprocessor

    prepare_mm()
    ann = generate(tmp_path, images=24, seed=11, size=320)
    ds = CocoDataset.load(tmp_path / "images", ann)
    cfg = load_config(FIXTURE / "config.py", 320)
    model = build_model(cfg, str(FIXTURE / "yolov8_synth.pth"))
    pre, deploy = Preprocessor(cfg), DeployModel(model).eval()
    detections = []
    for start in range(0, 24, 8):
        chunk = ds.images[start:start + 8]
        prep = pre([cv2.imread(str(im.path)) for im in chunk], [im.id for im in chunk])
        with torch.no_grad():
            boxes, scores = deploy(prep.inputs)
        for im, (b, s, l) in zip(chunk, host_postprocess(boxes, scores, prep.metas,
                                                          model.bbox_head.test_cfg)):
            detections += to_coco_detections(im.id, b.numpy(), s.numpy(), l.numpy(), ds.category_ids)[0]
    ref = _compare(ann, detections, [im.id for im in ds.images])
    assert ref["stats"]["AP"] > 0.3  # a trained model: the comparison is about real numbers


@pytest.mark.skipif(not has_module("faster_coco_eval"), reason="needs faster-coco-eval (extra fast-eval)")
def test_jittered_ground_truth_equal(tmp_path):
    """Thousands of detections in every size range: jittered boxes, false positives, tied scores."""
    import json

    from harness.data.synth import generate

    ann = generate(tmp_path, images=30, seed=4, size=320)
    gt = json.loads(ann.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        for _ in range(3):
            x, y, w, h = (np.asarray(a["bbox"]) + rng.normal(0, 3, 4)).tolist()
            dets.append({"image_id": a["image_id"], "category_id": int(rng.choice([a["category_id"], 1, 2, 3])),
                         "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": round(float(rng.random()), 2)})
    ids = [im["id"] for im in gt["images"]]
    _compare(ann, dets, ids)


def test_unknown_or_missing_evaluator_is_a_user_error(monkeypatch, tmp_path):
    import sys

    from harness.errors import UserError
    from harness.evaluate.coco_eval import evaluate

    with pytest.raises(UserError, match="unknown evaluator 'fast'"):
        evaluate(tmp_path / "a.json", [], [1], evaluator="fast")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(UserError, match=r"detbench\[fast-eval\]"):
        evaluate(tmp_path / "a.json", [], [1], evaluator="faster-coco-eval")


def _loop_to_coco(image_id, boxes, scores, labels, category_ids):
    """The per-detection conversion the vectorised one replaced: the oracle."""
    out, dropped = [], 0
    for (x1, y1, x2, y2), s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if l >= len(category_ids):
            dropped += 1
            continue
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(l)]),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(s), 6)})
    return out, dropped


@pytest.mark.parametrize("pattern", ["uniform", "decimal_halves", "dyadic_ties", "large"])
def test_to_coco_detections_equals_the_per_detection_loop(pattern):
    """Same entries, same floats bit for bit (json text too): half-way cases, ties, dropped labels."""
    import json

    from harness.evaluate.coco_eval import to_coco_detections

    rng = np.random.default_rng(7)
    n = 4000
    if pattern == "uniform":
        b = rng.random((n, 4)) * 1000
    elif pattern == "decimal_halves":  # x.xxx5 in decimal: the float32 is just above or below
        b = rng.integers(0, 640000, (n, 4)) / 1000 + 0.0005
    elif pattern == "dyadic_ties":  # k / 1024: exactly half-way at 3 decimals, rounds to even
        b = rng.integers(0, 1 << 20, (n, 4)) / 1024
    else:
        b = rng.random((n, 4)) * 1e6
    b = b.astype(np.float32)
    b[:, 2:] += b[:, :2]
    s = (rng.integers(0, 1 << 21, n) / (1 << 21)).astype(np.float32)  # 7th-decimal ties among them
    labels = rng.integers(0, 5, n)
    got = to_coco_detections(3, b, s, labels, [1, 2, 3])
    exp = _loop_to_coco(3, b, s, labels, [1, 2, 3])
    assert got[1] == exp[1] > 0  # labels 3 and 4 are beyond the 3 categories
    assert json.dumps(got[0]) == json.dumps(exp[0])
    assert to_coco_detections(3, b[:0], s[:0], labels[:0], [1, 2, 3]) == ([], 0)


def test_round_like_python_bitwise():
    from harness.evaluate.coco_eval import round_like_python

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.random(100000) * 1e4, np.arange(-4000, 4000) / 8000,
                             np.arange(0, 5000) / 1000 + 5e-4, np.arange(0, 5000) / 1e6 + 5e-7,
                             [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e300, -1e-300, 2.0 ** 53, 1e17]])
    for nd in (3, 6):
        got = round_like_python(values, nd)
        exp = np.array([round(v, nd) if np.isfinite(v) else v for v in values.tolist()])
        same = (got.view(np.int64) == exp.view(np.int64)) | (np.isnan(got) & np.isnan(exp))
        assert same.all(), values[~same][:5]


def _jittered_xyxy(gt, rng):
    """Per image (boxes xyxy float32, scores, labels 0..3 where 3 is beyond the 3 categories)."""
    by_image = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a["bbox"])
    out = {}
    for image_id, boxes in by_image.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).repeat(3, 0)
        boxes = boxes + rng.normal(0, 3, boxes.shape)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + np.maximum(boxes[:, 2:], 1.0)], 1)
        n = len(xyxy)
        out[image_id] = (xyxy.astype(np.float32), rng.random(n).astype(np.float32), rng.integers(0, 4, n))
    return out


def test_rows_path_equals_the_entry_path(tmp_path):
    """to_coco_rows (one batch, no per-detection Python) gives the same entries and the same AP."""
    import json

    from harness.data.synth import generate
    from harness.evaluate.coco_eval import evaluate, rows_to_detections, to_coco_detections, to_coco_rows

    ann = generate(tmp_path, images=12, seed=6, size=320)
    gt = json.loads(ann.read_text())
    dets = _jittered_xyxy(gt, np.random.default_rng(3))
    ids = sorted(dets)
    dets[ids[2]] = tuple(a[:0] for a in dets[ids[2]])  # an image with no detections
    cats = [1, 2, 3]
    entries, dropped = [], 0
    for i in ids:
        e, n = to_coco_detections(i, *dets[i], cats)
        entries += e
        dropped += n
    rows, rows_dropped = to_coco_rows(ids, [dets[i] for i in ids], cats)
    assert rows.shape == (len(entries), 7) and rows_dropped == dropped > 0
    assert json.dumps(rows_to_detections(rows)) == json.dumps(entries)
    evaluators = ["pycocotools"] + (["faster-coco-eval"] if has_module("faster_coco_eval") else [])
    for evaluator in evaluators:
        a, b = evaluate(ann, entries, ids, evaluator), evaluate(ann, rows, ids, evaluator)
        assert a["stats"] == b["stats"] and a["per_class"] == b["per_class"]
        assert a["stats"]["AP"] > 0.1
    assert to_coco_rows(ids[:1], [dets[ids[2]]], cats)[0].shape == (0, 7)
