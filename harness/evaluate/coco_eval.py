"""COCO AP with pycocotools: the 12 summary statistics and per-class AP."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def to_coco_detections(image_id: int, boxes, scores, labels, category_ids) -> tuple[list[dict], int]:
    """Convert xyxy detections to COCO json entries; returns (entries, dropped).

    Labels beyond the dataset's categories (a COCO-80 model on a 3-class set)
    cannot be scored and are dropped; the caller reports how many.
    """
    out, dropped = [], 0
    for (x1, y1, x2, y2), s, l in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if l >= len(category_ids):
            dropped += 1
            continue
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(l)]),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(s), 6)})
    return out, dropped


def evaluate(ann_file: str | Path, detections: list[dict], image_ids: list[int]) -> dict:
    """Run COCOeval on the given images; returns stats, per-class AP and the log text."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        gt = COCO(str(ann_file))
        if not detections:  # nothing found: 0 where there was something to find, else undefined
            present = _gt_present(gt, image_ids)
            stats = {name: (0.0 if present[_area(name)] else None) for name in STAT_NAMES}
            return {"stats": stats, "per_class": [], "log": "no detections"}
        dt = gt.loadRes(json.loads(json.dumps(detections)))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: _defined(v) for name, v in zip(STAT_NAMES, ev.stats)}
    return {"stats": stats, "per_class": _per_class(gt, ev), "log": log.getvalue()}


def _per_class(gt, ev) -> list[dict]:
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        name = gt.cats[cat_id]["name"]
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        rows.append({"class_name": name,
                     "ap": float(p_all[p_all > -1].mean()) if (p_all > -1).any() else None,
                     "ap50": float(p_50[p_50 > -1].mean()) if (p_50 > -1).any() else None})
    return rows


def _defined(value) -> float | None:
    """pycocotools writes -1 for "undefined" (e.g. no small objects at all): that is None, not 0."""
    value = float(value)
    return None if value < 0 else value


_AREAS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}


def _area(stat: str) -> str:
    return next((a for a in _AREAS if stat.endswith(a)), "all")


def _gt_present(gt, image_ids) -> dict[str, bool]:
    """Whether the evaluated images hold any non-crowd ground truth, overall and per COCO area."""
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=list(image_ids))) if not a.get("iscrowd")]
    present = {a: any(lo <= x["area"] <= hi for x in anns) for a, (lo, hi) in _AREAS.items()}
    return {**present, "all": bool(anns)}
