"""Greedy class-aware matching of two detection sets, the basis of every comparison.

Highest scores first, each reference-side detection takes the unmatched
other-side detection of its class with the highest IoU (at least ``min_iou``),
like COCO evaluation matches detections to ground truth.  Rotated detection sets
(boxes ``[cx, cy, w, h, angle]``, #19) are matched by exact rotated IoU.  Optional
``max_score_delta`` makes it a near-identity test (batch invariance).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.evaluate.alignment.detsets import Dets


@dataclass(frozen=True)
class Match:
    """Matched index pairs ``(a_idx, b_idx)`` with their IoU, and boolean masks of matched rows."""

    a_idx: np.ndarray
    b_idx: np.ndarray
    ious: np.ndarray
    a_matched: np.ndarray
    b_matched: np.ndarray

    @property
    def unmatched_a(self) -> np.ndarray:
        return np.flatnonzero(~self.a_matched)

    @property
    def unmatched_b(self) -> np.ndarray:
        return np.flatnonzero(~self.b_matched)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(na, nb) IoU: of xyxy boxes, or of rotated ``[cx, cy, w, h, angle]`` boxes (5 columns,
    :func:`rotated_box_iou`); two identical boxes have IoU 1 even with zero area."""
    if a.shape[-1] == 5 or b.shape[-1] == 5:
        return rotated_box_iou(a, b)
    return _xyxy_iou(a, b)


def rotated_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(na, nb) exact polygon IoU of rotated boxes (``harness.geometry.rotated.rotated_iou``,
    float64); identical boxes have IoU 1 even with zero area, as for xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 5), np.asarray(b, np.float64).reshape(-1, 5)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    import torch

    from harness.geometry.rotated import rotated_iou

    iou = rotated_iou(torch.from_numpy(a), torch.from_numpy(b)).double().numpy().copy()
    same = (a[:, None, :] == b[None, :, :]).all(axis=2)
    iou[same] = 1.0
    return iou


def _xyxy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(na, nb) IoU of xyxy boxes; two identical boxes have IoU 1 even with zero area.

    Written with 2-D arrays only: it runs on thousands of boxes per image and class.
    """
    ax1, ay1, ax2, ay2 = (a[:, k, None] for k in range(4))
    bx1, by1, bx2, by2 = (b[None, :, k] for k in range(4))
    w = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    h = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = np.clip(ax2 - ax1, 0, None) * np.clip(ay2 - ay1, 0, None)
    area_b = np.clip(bx2 - bx1, 0, None) * np.clip(by2 - by1, 0, None)
    union = area_a + area_b - inter
    empty = union <= 0
    iou = inter / np.where(empty, 1.0, union)
    if empty.any():
        r, c = np.nonzero(empty)
        iou[r, c] = (a[r] == b[c]).all(axis=1).astype(np.float64)
    return iou


def greedy_match(a: Dets, b: Dets, min_iou: float, max_score_delta: float | None = None) -> Match:
    """Match ``a`` (reference side) to ``b`` class by class."""
    pairs = [_match_class(a, b, label, min_iou, max_score_delta)
             for label in np.union1d(a.labels, b.labels)]
    a_idx = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    b_idx = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    ious = np.concatenate([p[2] for p in pairs]) if pairs else np.zeros(0)
    a_matched, b_matched = np.zeros(len(a), bool), np.zeros(len(b), bool)
    a_matched[a_idx], b_matched[b_idx] = True, True
    return Match(a_idx.astype(np.int64), b_idx.astype(np.int64), ious, a_matched, b_matched)


def _by_score(d: Dets, label) -> np.ndarray:
    idx = np.flatnonzero(d.labels == label)
    return idx[np.argsort(-d.scores[idx], kind="stable")]


def _match_class(a: Dets, b: Dets, label, min_iou: float, max_score_delta):
    ia, ib = _by_score(a, label), _by_score(b, label)
    ta, tb = _twins(a, ia, b, ib)
    ia, ib = ia[~np.isin(ia, ta)], ib[~np.isin(ib, tb)]
    if len(ia) == 0 or len(ib) == 0:
        return ta, tb, np.ones(len(ta))
    iou = box_iou(a.boxes[ia], b.boxes[ib])
    if max_score_delta is not None:
        close = np.abs(a.scores[ia][:, None] - b.scores[ib][None, :]) <= max_score_delta
        iou = np.where(close, iou, -1.0)
    iou = np.where(iou >= min_iou, iou, -1.0)
    ga, gb, gv = _greedy(iou, ia, ib)
    return np.concatenate([ta, ga]), np.concatenate([tb, gb]), np.concatenate([np.ones(len(ta)), gv])


def _twins(a: Dets, ia: np.ndarray, b: Dets, ib: np.ndarray):
    """Identical detections (box and score) pair up first, in score order.

    Greedy matching pairs them anyway (IoU 1 is the best a detection can
    get, barring duplicate boxes); doing it first keeps the IoU matrix to the
    detections that actually differ, which makes near-identical sets cheap.
    """
    pool: dict[bytes, list[int]] = {}
    for j, key in zip(ib, _keys(b, ib)):
        pool.setdefault(key, []).append(int(j))
    pa, pb = [], []
    for i, key in zip(ia, _keys(a, ia)):
        free = pool.get(key)
        if free:
            pa.append(int(i)), pb.append(free.pop(0))
    return np.asarray(pa, dtype=np.int64), np.asarray(pb, dtype=np.int64)


def _keys(d: Dets, idx: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(np.concatenate([d.boxes[idx], d.scores[idx, None]], axis=1))
    return [row.tobytes() for row in rows]


def _greedy(iou: np.ndarray, ia: np.ndarray, ib: np.ndarray):
    """Row by row (score order) take the best free column; -1 marks a forbidden pair."""
    taken = np.zeros(iou.shape[1], bool)
    rows, cols, vals = [], [], []
    for r in np.flatnonzero(iou.max(axis=1) >= 0):
        row = np.where(taken, -1.0, iou[r])
        c = int(row.argmax())
        if row[c] >= 0:
            taken[c] = True
            rows.append(r), cols.append(c), vals.append(row[c])
    return ia[rows].astype(np.int64), ib[cols].astype(np.int64), np.asarray(vals, dtype=np.float64)


def class_flips(a: Dets, b: Dets, match: Match, min_iou: float) -> list[tuple[int, int]]:
    """Unmatched pairs of *different* classes that overlap by ``min_iou``: the label flipped.

    Greedy by IoU, each detection in at most one flip.
    """
    ua, ub = match.unmatched_a, match.unmatched_b
    if len(ua) == 0 or len(ub) == 0:
        return []
    iou = box_iou(a.boxes[ua], b.boxes[ub])
    iou[a.labels[ua][:, None] == b.labels[ub][None, :]] = -1.0
    flips, used_r, used_c = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = divmod(int(flat), len(ub))
        if iou[r, c] < min_iou:
            break
        if r not in used_r and c not in used_c:
            used_r.add(r), used_c.add(c)
            flips.append((int(ua[r]), int(ub[c])))
    return flips
