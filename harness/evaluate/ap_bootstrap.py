"""Paired bootstrap over images of a COCO AP difference (issue #18: ΔAP with a confidence interval).

AP is not a sum over images, so the bootstrap re-accumulates it: pycocotools' ``evaluate()``
matches each image's detections once (per category, IoU threshold; area "all", 100
detections), and :func:`weighted_ap` repeats ``accumulate()`` with a weight per image — the
number of times a bootstrap resample drew it.  Weights of 1 give pycocotools' AP exactly;
weights 0/1 give pycocotools' AP on that subset of images (tests/test_ap_bootstrap.py); an
image drawn twice counts its detections and ground truth twice (tied detections of its
copies enter the precision/recall curve together).

*Paired*: the reference (fp32) and the candidate are re-accumulated under the same resamples,
so their shared per-image difficulty cancels; the seed fixes the resamples, so every candidate
of a search is judged on the same ones.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

IOU_THRS = 10  # pycocotools' .50:.05:.95
LEVEL = 0.95


@dataclass(frozen=True)
class Matches:
    """Per category: detection scores, image index, true-positive flags per IoU threshold
    (ignored detections removed) in pycocotools' order; ground-truth count per image."""

    image_ids: tuple
    categories: list  # of (img (D,), tp (T, D) bool, gt_per_image (I,) float)


def image_matches(ann_file: str | Path, rows, image_ids) -> Matches:
    """Match detections (``to_coco_rows``-style (N, 7) rows) to the ground truth of ``image_ids``."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = sorted(int(i) for i in image_ids)
    where = {i: k for k, i in enumerate(ids)}
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        if not len(rows):  # nothing detected: every category with ground truth scores 0
            cats = []
            for cat in gt.getCatIds():
                count = np.zeros(len(ids))
                for a in gt.loadAnns(gt.getAnnIds(imgIds=ids, catIds=[cat])):
                    if not a.get("iscrowd"):
                        count[where[a["image_id"]]] += 1
                cats.append((np.zeros(0, int), np.zeros((IOU_THRS, 0), bool), np.zeros((IOU_THRS, 0), bool),
                             count) if count.sum() else None)
            return Matches(tuple(ids), cats)
        from harness.evaluate.coco_eval import rows_to_detections

        ev = COCOeval(gt, gt.loadRes(rows_to_detections(rows)), "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    a0 = [tuple(a) for a in p.areaRng].index(tuple(p.areaRng[p.areaRngLbl.index("all")]))
    max_det = p.maxDets[-1]
    cats = []
    for k in range(len(p.catIds)):
        img, scores, tp, ign = [], [], [], []
        gt_count = np.zeros(n_img)
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + a0 * n_img + i]
            if e is None:
                continue
            d = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            gt_count[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            img.append(np.full(len(d), i))
            scores.append(d)
            tp.append(np.asarray(e["dtMatches"])[:, :max_det] > 0)
            ign.append(np.asarray(e["dtIgnore"])[:, :max_det] > 0)
        if not img or not gt_count.sum():
            cats.append(None)  # pycocotools leaves this category out of the mean (no ground truth)
            continue
        scores = np.concatenate(scores)
        order = np.argsort(-scores, kind="mergesort")
        img = np.concatenate(img)[order]
        tp = np.concatenate(tp, axis=1)[:, order] if len(order) else np.zeros((len(p.iouThrs), 0), bool)
        ign = np.concatenate(ign, axis=1)[:, order] if len(order) else np.zeros_like(tp)
        cats.append((img, tp, ign, gt_count))
    return Matches(tuple(ids), cats)


def weighted_ap(m: Matches, weights) -> "np.ndarray":
    """AP (.50:.95, area all, 100 detections) for each row of ``weights`` (B, images)."""
    import numpy as np

    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    rec_thrs = np.linspace(0.0, 1.0, 101)
    total = np.zeros(len(weights))
    count = np.zeros(len(weights))
    for cat in m.categories:
        if cat is None:
            continue
        img, tp, ign, gt_count = cat
        npig = weights @ gt_count  # (B,)
        w = weights[:, img]  # (B, D)
        for t in range(tp.shape[0]):
            keep = ~ign[t]
            wt = w[:, keep]
            tps = np.cumsum(wt * tp[t, keep], axis=1)
            fps = np.cumsum(wt * ~tp[t, keep], axis=1)
            defined = npig > 0
            q = np.zeros((len(weights), rec_thrs.size))
            if tps.shape[1]:
                rc = tps / np.where(defined, npig, 1.0)[:, None]
                pr = tps / (tps + fps + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
                for b in np.flatnonzero(defined):
                    idx = np.searchsorted(rc[b], rec_thrs, side="left")
                    ok = idx < rc.shape[1]
                    q[b, ok] = pr[b, idx[ok]]
            total += np.where(defined, q.mean(axis=1), 0.0)
            count += defined
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def resample_weights(n_images: int, samples: int, seed: int):
    """(samples, n_images) bootstrap counts: each row draws ``n_images`` images with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(samples, n_images))
    out = np.zeros((samples, n_images))
    np.add.at(out, (np.arange(samples)[:, None], draws), 1.0)
    return out


def bootstrap_aps(m: Matches, samples: int, seed: int, chunk: int = 50):
    """(AP on all images, AP on each of the seeded resamples): the half of a paired bootstrap
    that belongs to one graph, reusable against any other graph on the same images."""
    import numpy as np

    n = len(m.image_ids)
    weights = resample_weights(n, samples, seed)
    point = float(weighted_ap(m, np.ones((1, n)))[0])
    return point, np.concatenate([weighted_ap(m, weights[s:s + chunk]) for s in range(0, samples, chunk)])


def delta_from(ref: tuple, cand: tuple, seed: int, level: float = LEVEL) -> dict:
    """ΔAP = cand − ref from two :func:`bootstrap_aps` results of the same resamples."""
    import numpy as np

    deltas = cand[1] - ref[1]
    deltas = deltas[np.isfinite(deltas)]
    lo, hi = np.quantile(deltas, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"delta_ap": cand[0] - ref[0], "se": float(np.std(deltas, ddof=1)), "ci_low": float(lo),
            "ci_high": float(hi), "level": level, "samples": int(len(deltas)), "seed": seed}


def paired_delta(ref: Matches, cand: Matches, samples: int = 500, seed: int = 0,
                 level: float = LEVEL, chunk: int = 50) -> dict:
    """ΔAP = AP(cand) − AP(ref) on the same images, with its bootstrap SE and percentile CI."""
    if ref.image_ids != cand.image_ids:
        raise ValueError("paired bootstrap: the two evaluations cover different images")
    out = delta_from(bootstrap_aps(ref, samples, seed, chunk), bootstrap_aps(cand, samples, seed, chunk),
                     seed, level)
    out["images"] = len(ref.image_ids)
    return out


def interval(se, ci, level=LEVEL) -> str:
    """`` ± SE (SE; 95% CI [lo, hi])`` of a paired bootstrap, or nothing when there was none."""
    if se is None or not ci:
        return ""
    return f" ± {se:.4f} (SE; {level:.0%} CI [{ci[0]:+.4f}, {ci[1]:+.4f}])"
