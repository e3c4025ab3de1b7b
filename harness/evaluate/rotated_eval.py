"""Rotated-box evaluation of a cell (#19): its detections against a rotated COCO-style dataset.

A rotated cell's detections are written like horizontal ones (``detections.json``, COCO result
entries) with ``rbox`` ``[cx, cy, w, h, angle]`` (le90, radians, original image pixels) next to
``bbox`` (the axis-aligned box enclosing it, so COCO tools still read the file).  They are
scored on rotated IoU by :mod:`harness.evaluate.rotated_map`:

* ``AP`` .. ``AP75`` (and the area/recall statistics the metric gives): COCO-style AP on rotated
  IoU (IoU 0.50:0.95, 101-point, maxDets 100) — the same stats fields horizontal cells fill,
  so the store, ``show``, ``export`` and the dashboard need no second set of columns;
* ``mAP50_07`` / ``mAP50_area``: DOTA's VOC-style mAP at IoU 0.5, 11-point (VOC 2007, what DOTA
  reports) and area under the curve, difficult objects ignored;
* ``box_type: "rotated"`` and ``metric`` (the family in words) with them, so nothing compares a
  rotated AP with a horizontal one (``harness.check``, ``harness.runner.compare``).

Per class: ``ap`` (COCO-style 0.50:0.95) and ``ap50`` (COCO-style at 0.5), the ``class_ap``
rows every cell has; DOTA's per-class AP is kept in ``metrics.dota_per_class``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from harness.errors import UserError

METRIC = "rotated IoU: COCO-style AP 0.50:0.95 (101-point, maxDets 100); DOTA mAP50 (VOC-07 11-point and area)"
EVALUATOR = "detbench rotated_map"


def enclosing_xywh(rbox) -> list[float]:
    """The axis-aligned ``[x, y, w, h]`` box enclosing a rotated box ``[cx, cy, w, h, angle]``."""
    cx, cy, w, h, a = (float(v) for v in rbox[:5])
    c, s = abs(math.cos(a)), abs(math.sin(a))
    half_w, half_h = (w * c + h * s) / 2, (w * s + h * c) / 2
    return [cx - half_w, cy - half_h, 2 * half_w, 2 * half_h]


def to_rotated_coco_detections(image_id: int, rboxes, scores, labels,
                               category_ids) -> tuple[list[dict], int]:
    """Rotated detections (numpy ``[K, 5]``, ``[K]``, ``[K]``) to COCO result entries with ``rbox``;
    returns (entries, dropped).  Centre and size keep 3 decimals (as horizontal boxes), the
    angle 6 (radians: 3 would be 0.06 degrees, coarser than an aligned backend's drift)."""
    out, dropped = [], 0
    for rb, s, l in zip(rboxes.tolist(), scores.tolist(), labels.tolist()):
        if l >= len(category_ids):
            dropped += 1
            continue
        rbox = [round(v, 3) for v in rb[:4]] + [round(rb[4], 6)]
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(l)]),
                    "bbox": [round(v, 3) for v in enclosing_xywh(rbox)], "rbox": rbox,
                    "score": round(float(s), 6)})
    return out, dropped


def load_ground_truth(ann_file: str | Path, image_ids) -> tuple[dict, dict[int, str]]:
    """``({image_id: {"rboxes", "labels", "difficult"}}, {category id: name})`` of the given images.

    ``labels`` are category ids; ``difficult`` and ``iscrowd`` objects are ignored as
    :mod:`harness.evaluate.rotated_map` says.  An annotation without ``rbox`` is a user error
    naming it (a rotated dataset must have them).
    """
    import numpy as np

    data = json.loads(Path(ann_file).read_text())
    wanted = {int(i) for i in image_ids}
    per: dict[int, list[dict]] = {i: [] for i in wanted}
    for ann in data.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in wanted:
            continue
        if not isinstance(ann.get("rbox"), (list, tuple)) or len(ann["rbox"]) != 5:
            raise UserError(f"dataset.annotations: '{ann_file}' is a rotated dataset but annotation "
                            f"{ann.get('id')} has no `rbox` [cx, cy, w, h, angle]: regenerate it "
                            "(detbench synth --rotated) or add the rotated boxes")
        per[image_id].append(ann)
    gts = {}
    for image_id, anns in per.items():
        gts[image_id] = {
            "rboxes": np.asarray([a["rbox"] for a in anns], dtype=np.float64).reshape(-1, 5),
            "labels": np.asarray([int(a["category_id"]) for a in anns], dtype=np.int64),
            "difficult": np.asarray([bool(a.get("difficult", 0)) for a in anns], dtype=bool),
            "iscrowd": np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)}
    names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    return gts, names


def group_detections(detections: list[dict], image_ids) -> dict:
    """COCO result entries with ``rbox`` → ``{image_id: {"rboxes", "scores", "labels"}}``."""
    import numpy as np

    per: dict[int, list[dict]] = {int(i): [] for i in image_ids}
    for d in detections:
        if int(d["image_id"]) in per:
            per[int(d["image_id"])].append(d)
    return {i: {"rboxes": np.asarray([d["rbox"] for d in ds], dtype=np.float64).reshape(-1, 5),
                "scores": np.asarray([d["score"] for d in ds], dtype=np.float64),
                "labels": np.asarray([int(d["category_id"]) for d in ds], dtype=np.int64)}
            for i, ds in per.items()}


def evaluate_rotated(ann_file: str | Path, detections: list[dict], image_ids) -> dict:
    """Stats, per-class AP, evaluator and metric family of a rotated cell (see the module doc)."""
    from harness.evaluate import rotated_map

    gts, names = load_ground_truth(ann_file, image_ids)
    dets = group_detections(detections, image_ids)
    coco = rotated_map.coco_rotated_ap(dets, gts)
    voc07 = rotated_map.dota_map(dets, gts, iou_thr=0.5, use_07_metric=True)
    area = rotated_map.dota_map(dets, gts, iou_thr=0.5, use_07_metric=False)
    stats = {**{k: _defined(v) for k, v in coco["stats"].items()},
             "mAP50_07": _defined(voc07["mAP"]), "mAP50_area": _defined(area["mAP"]),
             "dota_per_class": {names.get(c, str(c)): {"mAP50_07": _defined(v["ap"]),
                                                       "mAP50_area": _defined(area["per_class"][c]["ap"])}
                                for c, v in sorted(voc07["per_class"].items())},
             "box_type": "rotated", "metric": METRIC}
    per_class = []
    for cat_id in sorted(names):
        found = coco["per_class"].get(cat_id) or {}
        per_class.append({"class_name": names[cat_id], "ap": _defined(found.get("ap")),
                          "ap50": _defined(found.get("ap50"))})
    return {"stats": stats, "per_class": per_class, "evaluator": EVALUATOR, "metric": METRIC,
            "log": ""}


def _defined(value) -> float | None:
    """``None`` for an undefined AP (no ground truth and no detection of it), NaN or negative."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or value < 0 else value
