"""Per-image detection sets: COCO result entries as arrays.

detections.json, replays and batch runs all go through :func:`from_coco`, so
every comparison sees the same rounding (detbench writes 3-decimal boxes and
6-decimal scores) and the same category ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dets:
    """One image's detections: boxes (n, 4) xyxy — or (n, 5) ``[cx, cy, w, h, angle]`` for a
    rotated cell (#19) — scores (n,), category ids (n,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def rotated(self) -> bool:
        return self.boxes.shape[-1] == 5

    @classmethod
    def empty(cls, dim: int = 4) -> "Dets":
        return cls(np.zeros((0, dim)), np.zeros(0), np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, boxes, scores, labels, dim: int = 4) -> "Dets":
        """From anything array-like; boxes xyxy (``dim`` 4) or rotated (``dim`` 5)."""
        return cls(np.asarray(boxes, dtype=np.float64).reshape(-1, dim),
                   np.asarray(scores, dtype=np.float64).reshape(-1),
                   np.asarray(labels, dtype=np.int64).reshape(-1))


def from_coco(entries: list[dict], image_ids=None, rotated: bool | None = None) -> dict[int, Dets]:
    """Group COCO result entries (xywh bbox; ``rbox`` for rotated cells) per image; ``image_ids``
    get an entry even when empty.  ``rotated`` None: rotated when the entries carry ``rbox``."""
    if rotated is None:
        rotated = any("rbox" in e for e in entries)
    grouped: dict[int, list[dict]] = {}
    for e in entries:
        grouped.setdefault(int(e["image_id"]), []).append(e)
    ids = list(grouped) if image_ids is None else [int(i) for i in image_ids]
    return {i: _one(grouped.get(i, []), rotated) for i in ids}


def _one(entries: list[dict], rotated: bool = False) -> Dets:
    if not entries:
        return Dets.empty(5 if rotated else 4)
    if rotated:
        return Dets.of([e["rbox"] for e in entries], [e["score"] for e in entries],
                       [e["category_id"] for e in entries], dim=5)
    xywh = np.array([e["bbox"] for e in entries], dtype=np.float64)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return Dets.of(boxes, [e["score"] for e in entries], [e["category_id"] for e in entries])
