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
