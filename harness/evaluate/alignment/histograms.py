"""Histograms stored as ``{"edges": [...], "counts": [...]}`` (len(edges) = len(counts) + 1).

Fixed edges, so histograms of different cells and runs line up; values
outside the edges land in the outermost bins.
"""
from __future__ import annotations

import numpy as np

#: |Δscore| is mostly float noise (1e-7) or a real change (1e-2): log-spaced, symmetric
SCORE_DELTA_EDGES = (-1.0, -1e-1, -1e-2, -1e-3, -1e-4, -1e-6, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_IOU_EDGES = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
#: rotated cells (#19): Δangle of matched pairs in degrees, wrapped to [-90, 90) (a rotated box
#: is the same box turned by 180°); detections.json keeps 6 decimals of radians (6e-5°), so the
#: innermost bin is rounding
ANGLE_DELTA_EDGES = (-90.0, -10.0, -1.0, -0.1, -0.01, -0.001, 0.001, 0.01, 0.1, 1.0, 10.0, 90.0)
#: ... and the shift of the box centre in original-image pixels (3 decimals kept)
CENTER_SHIFT_EDGES = (0.0, 0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 1e4)


def iou_edges(match_iou: float) -> list[float]:
    """From the matching threshold to 1, finest near 1 where aligned backends sit."""
    return [float(match_iou), *(e for e in _IOU_EDGES if e > match_iou), 1.0]


def histogram(values, edges) -> dict:
    edges = [float(e) for e in edges]
    values = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": edges, "counts": [int(c) for c in counts]}


def angle_deltas_deg(ref_angles, cand_angles) -> np.ndarray:
    """``cand - ref`` in degrees, wrapped to [-90, 90): le90 angles are defined modulo 180°."""
    d = np.asarray(cand_angles, np.float64) - np.asarray(ref_angles, np.float64)
    return np.degrees((d + np.pi / 2) % np.pi - np.pi / 2)
