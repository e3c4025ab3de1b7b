"""Rotated cells' evaluation (#19): detections.json with rbox, rotated-IoU AP in the stats fields,
DOTA mAP50, per-class AP, and the worker's dispatch by the model's box type."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from harness.backends.base import Detections
from harness.errors import UserError
from harness.evaluate.rotated_eval import (evaluate_rotated, group_detections, load_ground_truth,
                                           to_rotated_coco_detections)


@pytest.fixture(scope="module")
def rotated_set(tmp_path_factory):
    from harness.data.synth_rotated import generate

    out = tmp_path_factory.mktemp("rot")
    ann = generate(out, images=6, seed=4, size=160, workers=1)
    data = json.loads(ann.read_text())
    return ann, data


def _gt_as_detections(data, angle_offset=0.0, drop_every=0):
    dets = []
    for k, a in enumerate(data["annotations"]):
        if drop_every and k % drop_every == 0:
            continue
        rb = list(a["rbox"])
        rb[4] += angle_offset
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "rbox": rb,
                     "bbox": a["bbox"], "score": 0.9 - 0.001 * k})
    return dets


def test_ground_truth_as_detections_scores_one(rotated_set):
    ann, data = rotated_set
    ids = [im["id"] for im in data["images"]]
    out = evaluate_rotated(ann, _gt_as_detections(data), ids)
    s = out["stats"]
    assert s["box_type"] == "rotated" and "rotated IoU" in s["metric"] == out["metric"]
    assert s["AP"] == pytest.approx(1.0) and s["AP50"] == pytest.approx(1.0)
    assert s["mAP50_07"] == pytest.approx(1.0) and s["mAP50_area"] == pytest.approx(1.0)
    names = {c["name"] for c in data["categories"]}
    present = {c["name"] for c in data["categories"]
               if any(a["category_id"] == c["id"] and not a["difficult"] for a in data["annotations"])}
    assert {r["class_name"] for r in out["per_class"]} == names
    assert all(r["ap"] == pytest.approx(1.0) for r in out["per_class"] if r["class_name"] in present)
    assert set(s["dota_per_class"]) <= names


def test_rotated_iou_is_what_is_scored(rotated_set):
    """Detections turned by 90 degrees: the elongated shapes (aspect >= 1.5) overlap by less than
    IoU 0.5, so rotated AP is 0, while a bbox AP on their enclosing boxes still finds a lot."""
    from harness.evaluate.coco_eval import evaluate

    ann, data = rotated_set
    ids = [im["id"] for im in data["images"]]
    turned = _gt_as_detections(data, angle_offset=math.pi / 2)
    rotated = evaluate_rotated(ann, turned, ids)["stats"]
    for d in turned:  # the enclosing box of the turned box, as detections.json would hold it
        cx, cy, w, h, a = d["rbox"]
        c, s = abs(math.cos(a)), abs(math.sin(a))
        d["bbox"] = [cx - (w * c + h * s) / 2, cy - (w * s + h * c) / 2, w * c + h * s, w * s + h * c]
    horizontal = evaluate(ann, turned, ids)["stats"]
    assert rotated["AP50"] == 0 and rotated["mAP50_07"] == 0 and horizontal["AP50"] > 0.3
    half = evaluate_rotated(ann, _gt_as_detections(data, drop_every=2), ids)["stats"]
    assert 0.35 < half["AP50"] < 0.65 and 0.35 < half["mAP50_07"] < 0.65  # every other object found


def test_no_detections_scores_zero_where_there_is_ground_truth(rotated_set):
    ann, data = rotated_set
    out = evaluate_rotated(ann, [], [im["id"] for im in data["images"]])
    assert out["stats"]["AP"] == 0 and out["stats"]["mAP50_07"] == 0


def test_difficult_and_missing_rbox(tmp_path, rotated_set):
    _, data = rotated_set
    gts, names = load_ground_truth(rotated_set[0], [1, 2])
    assert set(gts) == {1, 2} and gts[1]["rboxes"].shape[1] == 5
    want = [bool(a["difficult"]) for a in data["annotations"] if a["image_id"] == 1]
    assert gts[1]["difficult"].tolist() == want and names == {c["id"]: c["name"] for c in data["categories"]}
    broken = {**data, "annotations": [{k: v for k, v in a.items() if k != "rbox"}
                                      for a in data["annotations"]]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(UserError, match="has no `rbox`"):
        load_ground_truth(path, [1])
    assert group_detections([], [3])[3]["rboxes"].shape == (0, 5)


def test_worker_converts_rotated_detections_by_the_models_box_type():
    from harness.runner.worker import _converter

    rboxes = np.array([[30.0, 40.0, 20.0, 6.0, 0.3]])
    det = Detections(rboxes, np.array([0.8]), np.array([1]))
    entries, dropped = _converter(SimpleNamespace(box_type="rotated"))(5, det, [7, 8])
    assert dropped == 0 and entries[0]["rbox"] == [30.0, 40.0, 20.0, 6.0, 0.3]
    assert entries[0]["category_id"] == 8 and len(entries[0]["bbox"]) == 4
    assert entries == to_rotated_coco_detections(5, rboxes, np.array([0.8]), np.array([1]), [7, 8])[0]
    with pytest.raises(RuntimeError, match=r"not \[K, 5\]"):
        _converter(SimpleNamespace(box_type="rotated"))(5, Detections(np.zeros((1, 4)), det.scores,
                                                                      det.labels), [7, 8])
    flat = _converter(SimpleNamespace(box_type="horizontal"))(
        5, Detections(np.array([[1.0, 2.0, 11.0, 12.0]]), det.scores, det.labels), [7, 8])[0]
    assert flat[0]["bbox"] == [1.0, 2.0, 10.0, 10.0] and "rbox" not in flat[0]
