"""Worst images with boxes drawn: the reference's detections against the candidate's.

Reads the two cells' ``detections.json`` and the dataset image through the paths the store
records; draws only detections above a display score so the picture stays readable.
"""
from __future__ import annotations

import json
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


def draw(image_id: int, reference, candidate, min_score: float = 0.3):
    """RGB array of one image with reference (green, thick) and candidate (red, thin) boxes,
    or None when a file is missing (e.g. a store copied to another machine)."""
    import cv2

    try:
        ds = candidate.params["dataset"]
        img = cv2.imread(str(Path(ds["images"]) / _file_names(ds["annotations"])[image_id]))
        ref = _detections(reference.artifacts["detections"]).get(image_id, [])
        cand = _detections(candidate.artifacts["detections"]).get(image_id, [])
    except (KeyError, OSError, TypeError, ValueError):
        return None
    if img is None:
        return None
    for dets, colour, width in ((ref, REFERENCE_BGR, 3), (cand, CANDIDATE_BGR, 1)):
        for d in dets:
            if d["score"] < min_score:
                continue
            x, y, w, h = (int(round(v)) for v in d["bbox"])
            cv2.rectangle(img, (x, y), (x + w, y + h), colour, width)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
