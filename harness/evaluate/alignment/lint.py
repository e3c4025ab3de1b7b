"""NMS lint: settings that silently change what a cell measures.

Each lint is ``{"code", "message", "count"?}``; codes are stable for scripts.
"""
from __future__ import annotations

import numpy as np

from harness.evaluate.alignment.detsets import Dets
from harness.evaluate.alignment.settings import STEPS, NmsSettings


def settings_lints(ref: NmsSettings, cand: NmsSettings, nms: str) -> list[dict]:
    """Every NMS setting in which the candidate differs from the reference's evaluation."""
    out = []
    for name in STEPS:
        r, c = getattr(ref, name), getattr(cand, name)
        if r == c:
            continue
        if name == "score_thr" and nms != "none":
            out.append({"code": "deploy_score_thr",
                        "message": f"the graph's NMS keeps scores > {c}, evaluation uses {r}: "
                                   "mAP is computed on a differently truncated list"})
        else:
            out.append({"code": f"{name}_differs",
                        "message": f"{name} {_show(c)} here vs {_show(r)} in the reference"})
    return out


def _show(value) -> str:
    return "no cap" if value is None else str(value)


def candidates_per_image(scores: np.ndarray, s: NmsSettings) -> np.ndarray:
    """(K,) count of NMS candidates above score_thr: (prior, class) pairs, or priors if single-label."""
    scores = np.asarray(scores)
    if s.multi_label and scores.shape[-1] > 1:
        return (scores > s.score_thr).sum(axis=(1, 2))
    return (scores.max(axis=2) > s.score_thr).sum(axis=1)


def cap_lint(scores: np.ndarray, s: NmsSettings, code: str, whose: str) -> list[dict]:
    """Images whose candidates above score_thr exceed the pre-NMS cap (counted on the reference's tensors)."""
    if s.pre_topk is None or len(scores) == 0:
        return []
    counts = candidates_per_image(scores, s)
    over = int((counts > s.pre_topk).sum())
    if not over:
        return []
    return [{"code": code, "count": over,
             "message": f"{over} of {len(counts)} images have more candidates above score_thr "
                        f"{s.score_thr} (up to {int(counts.max())}) than {whose} pre_topk {s.pre_topk}"}]


def keep_topk_lint(dets: dict[int, Dets], keep_topk: int | None) -> list[dict]:
    """Images whose detections hit keep_topk exactly: the list was cut during evaluation.

    Counted on detections.json, where labels outside the dataset's classes are
    already dropped, so this can undercount for a model with more classes.
    """
    if keep_topk is None:
        return []
    hit = sum(len(d) >= keep_topk for d in dets.values())
    if not hit:
        return []
    return [{"code": "keep_topk_hit", "count": hit,
             "message": f"{hit} of {len(dets)} images have exactly keep_topk={keep_topk} detections: "
                        "lower-scored detections were cut"}]


def batch_lint(invariance: dict | None) -> list[dict]:
    if not invariance or not invariance["images_differ"]:
        return []
    n = invariance["images_differ"]
    return [{"code": "batch_variant", "count": n,
             "message": f"{n} of {invariance['images']} images differ from batch "
                        f"{invariance['against_batch']} ({invariance['against']})"}]
