"""Histograms stored as ``{"edges": [...], "counts": [...]}`` (len(edges) = len(counts) + 1).

Fixed edges, so histograms of different cells and runs line up; values
outside the edges land in the outermost bins.
"""
from __future__ import annotations

import numpy as np

#: |Δscore| is mostly float noise (1e-7) or a real change (1e-2): log-spaced, symmetric
SCORE_DELTA_EDGES = (-1.0, -1e-1, -1e-2, -1e-3, -1e-4, -1e-6, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_IOU_EDGES = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


def iou_edges(match_iou: float) -> list[float]:
    """From the matching threshold to 1, finest near 1 where aligned backends sit."""
    return [float(match_iou), *(e for e in _IOU_EDGES if e > match_iou), 1.0]


def histogram(values, edges) -> dict:
    edges = [float(e) for e in edges]
    values = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": edges, "counts": [int(c) for c in counts]}
