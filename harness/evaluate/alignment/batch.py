"""Batch invariance: the same cell at batch 1 and batch N must produce the same detections.

A batch-dependent output (padding leaking between images, a batched NMS that
mixes images, batch-size-dependent kernels) shows up as images whose
detections differ beyond rounding: not the same set after matching with
IoU >= 0.99 and |Δscore| <= 1e-4.
"""
from __future__ import annotations

from harness.evaluate.alignment.detsets import Dets
from harness.evaluate.alignment.matching import greedy_match

BATCH_IOU = 0.99
BATCH_SCORE_TOL = 1e-4


def image_difference(a: Dets, b: Dets) -> int:
    """Detections of either set without a near-identical partner in the other."""
    m = greedy_match(a, b, BATCH_IOU, BATCH_SCORE_TOL)
    return len(m.unmatched_a) + len(m.unmatched_b)


def batch_invariance(base: dict[int, Dets], other: dict[int, Dets], worst: int = 10) -> dict:
    """Count the images whose detections differ; the worst ones first (ties by image id)."""
    ids = list(dict.fromkeys([*base, *other]))
    dim = next((d.boxes.shape[-1] for d in (*base.values(), *other.values())), 4)  # 5: rotated
    rows = []
    for image_id in ids:
        a, b = base.get(image_id, Dets.empty(dim)), other.get(image_id, Dets.empty(dim))
        n = image_difference(a, b)
        if n:
            rows.append({"image_id": int(image_id), "unmatched": n, "base_detections": len(a),
                         "detections": len(b)})
    rows.sort(key=lambda r: (-r["unmatched"], r["image_id"]))
    return {"images": len(ids), "images_differ": len(rows), "iou_min": BATCH_IOU,
            "score_tol": BATCH_SCORE_TOL, "worst_images": rows[:worst]}
