"""Tensor-level agreement of decoded pre-NMS outputs (boxes, scores) with the reference.

When these agree to float precision, every detection difference is a
postprocessing matter (settings, NMS implementation), not the network.
"""
from __future__ import annotations

import numpy as np

#: relative errors are taken against max(|reference|, REL_FLOOR): scores near zero,
#: which no realistic threshold keeps, would otherwise dominate the relative error.
REL_FLOOR = 1e-3


def error_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """max/mean absolute and relative error and cosine similarity of two same-shape arrays."""
    ref, cand = np.asarray(ref, np.float64).ravel(), np.asarray(cand, np.float64).ravel()
    if ref.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "mean_rel": 0.0, "cosine": 1.0}
    diff = np.abs(cand - ref)
    rel = diff / np.maximum(np.abs(ref), REL_FLOOR)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float(rel.max()), "mean_rel": float(rel.mean()), "cosine": _cosine(ref, cand)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_decoded(ref: dict, cand: dict) -> dict:
    """Both decoded.npz contents ({image_ids, boxes, scores}) → overall and per-image statistics.

    Only images present in both are compared (in the reference's order); a
    shape mismatch (another image size or class count) is reported, not raised.
    """
    pos = {int(i): k for k, i in enumerate(cand["image_ids"])}
    rows = [(k, pos[int(i)]) for k, i in enumerate(ref["image_ids"]) if int(i) in pos]
    if not rows:
        return {"available": False, "reason": "no image in common"}
    r_idx, c_idx = np.array([r for r, _ in rows]), np.array([c for _, c in rows])
    shapes = {name: (ref[name].shape[1:], cand[name].shape[1:]) for name in ("boxes", "scores")}
    bad = {name: s for name, s in shapes.items() if s[0] != s[1]}
    if bad:
        return {"available": False, "reason": f"decoded shapes differ: {bad}"}
    out = {"available": True, "images": len(rows)}
    for name in ("boxes", "scores"):
        out[name] = error_stats(ref[name][r_idx], cand[name][c_idx])
    out["per_image"] = [{"image_id": int(ref["image_ids"][r]),
                         **{name: error_stats(ref[name][r], cand[name][c]) for name in ("boxes", "scores")}}
                        for r, c in rows]
    return out
