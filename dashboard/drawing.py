"""Worst images with boxes drawn: the reference's detections against the candidate's.

Reads the two cells' ``detections.json`` and the dataset image through the paths the store
records; draws either every detection above the evaluation score threshold, or only those
that differ (unmatched by the alignment analysis' own class-aware greedy matching).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

REFERENCE_BGR, CANDIDATE_BGR = (60, 180, 60), (40, 40, 230)


@lru_cache(maxsize=16)
def _detections(path: str) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for det in json.loads(Path(path).read_text()):
        by_image.setdefault(int(det["image_id"]), []).append(det)
    return by_image


@lru_cache(maxsize=8)
def _file_names(annotations: str) -> dict[int, str]:
    data = json.loads(Path(annotations).read_text())
    return {int(im["id"]): im["file_name"] for im in data["images"]}


def draw(image_id: int, reference, candidate, min_score: float = 0.0, *,
         only_differing: bool = False, match_iou: float = 0.5):
    """RGB array of one image with reference (green, thick) and candidate (red, thin) boxes,
    or None when a file is missing (e.g. a store copied to another machine).  With
    ``only_differing``: the reference's missing and the candidate's extra detections only."""
    import cv2

    try:
        ds = candidate.params["dataset"]
        img = cv2.imread(str(Path(ds["images"]) / _file_names(ds["annotations"])[image_id]))
        ref = [d for d in _detections(reference.artifacts["detections"]).get(image_id, [])
               if d["score"] >= min_score]
        cand = [d for d in _detections(candidate.artifacts["detections"]).get(image_id, [])
                if d["score"] >= min_score]
    except (KeyError, OSError, TypeError, ValueError):
        return None
    if img is None:
        return None
    if only_differing:
        ref, cand = differing(ref, cand, match_iou)
    for dets, colour, width in ((ref, REFERENCE_BGR, 3), (cand, CANDIDATE_BGR, 1)):
        for d in dets:
            if "rbox" in d:  # a rotated cell (#19): its rotated box, not the enclosing one
                corners = cv2.boxPoints(((d["rbox"][0], d["rbox"][1]), (d["rbox"][2], d["rbox"][3]),
                                         math.degrees(d["rbox"][4])))
                cv2.polylines(img, [corners.round().astype("int32")], True, colour, width)
                continue
            x, y, w, h = (int(round(v)) for v in d["bbox"])
            cv2.rectangle(img, (x, y), (x + w, y + h), colour, width)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def differing(ref: list[dict], cand: list[dict], match_iou: float) -> tuple[list[dict], list[dict]]:
    """COCO-format detections of one image: (reference ones left unmatched, candidate ones left
    unmatched), by :func:`harness.evaluate.alignment.matching.greedy_match`."""
    from harness.evaluate.alignment.detsets import from_coco
    from harness.evaluate.alignment.matching import greedy_match

    entries = [{**d, "image_id": 0} for d in ref], [{**d, "image_id": 0} for d in cand]
    rotated = any("rbox" in d for d in (*ref, *cand))  # rotated cells match by rotated IoU (#19)
    a, b = (from_coco(e, [0], rotated=rotated)[0] for e in entries)
    match = greedy_match(a, b, match_iou)
    # from_coco keeps the entries' order, so row i of a/b is entry i
    return [ref[int(i)] for i in match.unmatched_a], [cand[int(i)] for i in match.unmatched_b]
