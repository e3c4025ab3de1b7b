"""Rotated-box mAP: DOTA-style VOC AP per class and COCO-style AP50:95, both on exact rotated IoU.

Inputs are per-image dicts of numpy arrays (the #19 contract)::

    dets = {image_id: {"rboxes": [N, 5], "scores": [N], "labels": [N]}}
    gts  = {image_id: {"rboxes": [M, 5], "labels": [M], "difficult": [M] bool,
                       "iscrowd": [M] bool (optional)}}

Boxes are ``(cx, cy, w, h, angle_rad)`` (harness.geometry.rotated's le90
convention; any representation of the same rectangle gives the same IoU).
Every image to be evaluated must appear in ``gts`` (possibly with no boxes);
detections on an image missing there are an error, as in pycocotools'
``loadRes``.

``dota_map`` follows mmrotate 1.0.0rc1's ``eval_rbbox_map`` (DOTA devkit's
VOC rule): per image, detections in descending score order take the
ground truth of highest IoU; at IoU >= thr an unclaimed GT makes a true
positive, a claimed one a false positive, and a *difficult* GT (or crowd)
makes the detection count as neither; difficult GTs are not counted in the
recall.  AP is VOC07's 11-point or the area under the interpolated curve.

``coco_rotated_ap`` reimplements pycocotools' ``COCOeval`` (``evaluateImg``,
``accumulate``, ``summarize``) with rotated IoU in place of ``maskUtils.iou``:
greedy matching by score at IoU thresholds .50:.05:.95, 101-point
interpolated precision, maxDets 1/10/100, COCO's area ranges on ``w * h``.
Crowd GTs (``iscrowd``) behave exactly as in pycocotools (ignored, IoU is
intersection over the detection's area, matchable by any number of
detections).  *Difficult* GTs have no COCO counterpart: they are ignored
GTs like the ones outside an area range (a detection matched to one counts
neither way, each is matched at most once, plain IoU).

Differences from the reference implementations, all deliberate: sorts are
stable (mmrotate uses numpy's unstable quicksort, so its order of equal
scores is unspecified), IoU is exact float64 (mmrotate's comes from mmcv's
float32 kernel) and DOTA AP is float64 (mmdet rounds it to float32).  The
11-point variant samples recall at ``np.arange(0, 1.1, 0.1)`` like the DOTA
devkit and mmdet, whose 0.3, 0.6 and 0.7 are one ulp above those numbers.
"""
from __future__ import annotations

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
MAX_DETS = (1, 10, 100)


def _iou_thrs() -> np.ndarray:
    return np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)


def _rec_thrs() -> np.ndarray:
    return np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


# --- inputs ------------------------------------------------------------------------------------

def _arr(entry: dict, key: str, image_id, what: str, dtype, n: int | None, default=None) -> np.ndarray:
    if key not in entry:
        if default is None:
            raise ValueError(f"{what} for image {image_id!r}: missing key '{key}'")
        return np.full(n, default, dtype=dtype)
    a = np.asarray(entry[key], dtype=dtype)
    if key == "rboxes":
        a = a.reshape(-1, 5) if a.size == 0 else a
        if a.ndim != 2 or a.shape[1] != 5:
            raise ValueError(f"{what} for image {image_id!r}: 'rboxes' must be [N, 5], got {a.shape}")
    elif a.shape != (n,):
        raise ValueError(f"{what} for image {image_id!r}: '{key}' has shape {a.shape}, expected ({n},)")
    return a


def _prepare(dets: dict, gts: dict) -> tuple[dict, dict]:
    g_out, d_out = {}, {}
    for img, g in gts.items():
        rb = _arr(g, "rboxes", img, "ground truth", np.float64, None)
        n = len(rb)
        g_out[img] = {"rboxes": rb, "labels": _arr(g, "labels", img, "ground truth", np.int64, n),
                      "difficult": _arr(g, "difficult", img, "ground truth", bool, n, False),
                      "iscrowd": _arr(g, "iscrowd", img, "ground truth", bool, n, False)}
    for img, d in dets.items():
        if img not in g_out:
            raise ValueError(f"detections for image {img!r}, which has no ground-truth entry "
                             "(give every evaluated image an entry in gts, empty if it has no objects)")
        rb = _arr(d, "rboxes", img, "detections", np.float64, None)
        n = len(rb)
        d_out[img] = {"rboxes": rb, "scores": _arr(d, "scores", img, "detections", np.float64, n),
                      "labels": _arr(d, "labels", img, "detections", np.int64, n)}
    return d_out, g_out


def _classes(dets: dict, gts: dict, classes) -> list[int]:
    if classes is not None:
        return [int(c) for c in classes]
    found = set()
    for part in (*dets.values(), *gts.values()):
        found.update(part["labels"].tolist())
    return sorted(found)


def _iou(a: np.ndarray, b: np.ndarray, mode: str = "iou") -> np.ndarray:
    import torch

    from harness.geometry.rotated import rotated_iou

    return rotated_iou(torch.from_numpy(a), torch.from_numpy(b), mode=mode).numpy()


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


# --- DOTA / VOC ---------------------------------------------------------------------------------

def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """VOC AP of a precision/recall curve: 11-point (VOC07) or area under the interpolated curve."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.0 + 1e-3, 0.1):
            above = precision[recall >= t]
            ap += above.max() if above.size else 0.0
        return float(ap / 11.0)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _voc_tpfp(db: np.ndarray, gb: np.ndarray, g_ignore: np.ndarray, iou_thr: float):
    """TP/FP flags of one image's detections of one class (``db`` in descending score order)."""
    tp, fp = np.zeros(len(db)), np.zeros(len(db))
    if len(gb) == 0:
        fp[:] = 1
        return tp, fp
    iou = _iou(db, gb)
    best, arg = iou.max(axis=1), iou.argmax(axis=1)
    covered = np.zeros(len(gb), dtype=bool)
    for k in range(len(db)):
        if best[k] >= iou_thr:
            m = arg[k]
            if g_ignore[m]:
                continue  # matched a difficult GT: neither TP nor FP
            if covered[m]:
                fp[k] = 1
            else:
                covered[m] = True
                tp[k] = 1
        else:
            fp[k] = 1
    return tp, fp


def dota_map(dets: dict, gts: dict, iou_thr: float = 0.5, use_07_metric: bool = True,
             classes=None) -> dict:
    """DOTA-style mAP (mmrotate ``eval_rbbox_map``): per-class VOC AP at ``iou_thr``.

    Returns ``{"mAP", "metric", "iou_thr", "per_class": {label: {"ap", "num_gts",
    "num_dets", "recall"}}}``; a class without (non-difficult) ground truth has
    ``ap`` None and stays out of the mean; ``mAP`` is None when no class has any.
    ``classes`` (labels) defaults to every label seen in ``gts`` or ``dets``.
    """
    dets, gts = _prepare(dets, gts)
    per_class = {}
    for c in _classes(dets, gts, classes):
        tps, fps, scores, num_gts = [], [], [], 0
        for img, g in gts.items():
            gm = g["labels"] == c
            g_ignore = (g["difficult"] | g["iscrowd"])[gm]
            num_gts += int((~g_ignore).sum())
            d = dets.get(img)
            if d is None:
                continue
            dm = d["labels"] == c
            if not dm.any():
                continue
            order = _order(d["scores"][dm])
            db, ds = d["rboxes"][dm][order], d["scores"][dm][order]
            tp, fp = _voc_tpfp(db, g["rboxes"][gm], g_ignore, iou_thr)
            tps.append(tp), fps.append(fp), scores.append(ds)
        num_dets = int(sum(len(s) for s in scores))
        if num_dets:
            order = _order(np.concatenate(scores))
            tp = np.cumsum(np.concatenate(tps)[order])
            fp = np.cumsum(np.concatenate(fps)[order])
        else:
            tp = fp = np.zeros(0)
        eps = np.finfo(np.float32).eps
        recall = tp / max(num_gts, eps)
        precision = tp / np.maximum(tp + fp, eps)
        per_class[c] = {"ap": voc_ap(recall, precision, use_07_metric) if num_gts else None,
                        "num_gts": num_gts, "num_dets": num_dets,
                        "recall": float(recall[-1]) if num_dets else 0.0}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"mAP": float(np.mean(aps)) if aps else None,
            "metric": "voc07_11point" if use_07_metric else "area", "iou_thr": float(iou_thr),
            "per_class": per_class}


# --- COCO ---------------------------------------------------------------------------------------

def _coco_image(d: dict | None, g: dict, c: int, max_det: int, iou_thrs: np.ndarray):
    """pycocotools ``evaluateImg`` for one image and class, every area range; None if nothing there."""
    gm = g["labels"] == c
    gb = g["rboxes"][gm]
    crowd = g["iscrowd"][gm]
    g_base = (g["difficult"] | g["iscrowd"])[gm]
    g_area = gb[:, 2] * gb[:, 3]
    if d is not None and (d["labels"] == c).any():
        dm = d["labels"] == c
        order = _order(d["scores"][dm])[:max_det]
        db, ds = d["rboxes"][dm][order], d["scores"][dm][order]
    else:
        db, ds = np.zeros((0, 5)), np.zeros(0)
    if len(gb) == 0 and len(db) == 0:
        return None
    d_area = db[:, 2] * db[:, 3]
    ious = np.zeros((len(db), len(gb)))
    if len(db) and len(gb):
        ious = _iou(db, gb)
        if crowd.any():  # pycocotools: IoU with a crowd region is intersection / detection area
            ious[:, crowd] = _iou(db, gb, mode="iof")[:, crowd]
    thr = np.minimum(iou_thrs, 1 - 1e-10)[:, None]
    # detections that reach the lowest threshold with some GT; the others never match
    reach = np.nonzero((ious >= thr.min()).any(axis=1))[0] if len(gb) else np.zeros(0, dtype=int)
    out = {}
    for name, (lo, hi) in AREA_RANGES.items():
        g_ig = g_base | (g_area < lo) | (g_area > hi)
        gind = np.argsort(g_ig, kind="stable")  # regular GTs first, ignored ones last
        g_ig, g_crowd, io = g_ig[gind], crowd[gind], ious[:, gind]
        n_t, n_g = len(iou_thrs), len(gb)
        gtm = np.zeros((n_t, n_g), dtype=bool)
        dtm = np.zeros((n_t, len(db)), dtype=bool)
        dt_ig = np.zeros((n_t, len(db)), dtype=bool)
        for k in reach:
            ok = (~gtm | g_crowd[None, :]) & (io[k][None, :] >= thr)
            regular = ok & ~g_ig[None, :]
            # a regular GT wins over an ignored one; among candidates the highest IoU, ties to the
            # last one (pycocotools replaces the match on ">=")
            use = np.where(regular.any(axis=1, keepdims=True), regular, ok)
            vals = np.where(use, io[k][None, :], -np.inf)
            m = n_g - 1 - vals[:, ::-1].argmax(axis=1)
            hit = use.any(axis=1)
            t_hit, m_hit = np.nonzero(hit)[0], m[hit]
            dtm[t_hit, k] = True
            dt_ig[t_hit, k] = g_ig[m_hit]
            gtm[t_hit, m_hit] = True
        outside = (d_area < lo) | (d_area > hi)
        dt_ig |= ~dtm & outside[None, :]
        out[name] = (ds, dtm, dt_ig, g_ig)
    return out


def coco_rotated_ap(dets: dict, gts: dict, classes=None) -> dict:
    """COCO-style AP50:95 on rotated IoU (pycocotools' rules; see the module docstring).

    Returns ``{"stats": {AP, AP50, AP75, AP_small, ..., AR_large} (None where
    pycocotools gives -1), "mAP" (= stats AP), "per_class": {label: {"ap",
    "ap50"}}, "precision" [T, R, K, A, M], "recall" [T, K, A, M], "classes"}``,
    with the array layout of ``COCOeval.eval`` (areas all/small/medium/large,
    maxDets 1/10/100).
    """
    dets, gts = _prepare(dets, gts)
    labels = _classes(dets, gts, classes)
    iou_thrs, rec_thrs = _iou_thrs(), _rec_thrs()
    n_t, n_r, n_k, n_a, n_m = len(iou_thrs), len(rec_thrs), len(labels), len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    images = sorted(gts)
    for k, c in enumerate(labels):
        evals = [_coco_image(dets.get(img), gts[img], c, MAX_DETS[-1], iou_thrs) for img in images]
        evals = [e for e in evals if e is not None]
        if not evals:
            continue
        for a, name in enumerate(AREA_RANGES):
            per_img = [e[name] for e in evals]
            g_ig = np.concatenate([e[3] for e in per_img])
            npig = int(np.count_nonzero(~g_ig))
            if npig == 0:
                continue
            for mi, max_det in enumerate(MAX_DETS):
                scores = np.concatenate([e[0][:max_det] for e in per_img])
                order = np.argsort(-scores, kind="mergesort")
                dtm = np.concatenate([e[1][:, :max_det] for e in per_img], axis=1)[:, order]
                dt_ig = np.concatenate([e[2][:, :max_det] for e in per_img], axis=1)[:, order]
                tp_sum = np.cumsum(dtm & ~dt_ig, axis=1).astype(float)
                fp_sum = np.cumsum(~dtm & ~dt_ig, axis=1).astype(float)
                for t in range(n_t):
                    tp, fp = tp_sum[t], fp_sum[t]
                    nd = len(tp)
                    rc = tp / npig
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, mi] = rc[-1] if nd else 0
                    if nd:
                        pr = np.maximum.accumulate(pr[::-1])[::-1]
                    inds = np.searchsorted(rc, rec_thrs, side="left")
                    q = np.zeros(n_r)
                    valid = inds < nd
                    q[valid] = pr[inds[valid]]
                    precision[t, :, k, a, mi] = q
    stats = _summarize(precision, recall, iou_thrs)
    per_class = {}
    for k, c in enumerate(labels):
        p_all, p_50 = precision[:, :, k, 0, -1], precision[0, :, k, 0, -1]
        per_class[c] = {"ap": float(p_all[p_all > -1].mean()) if (p_all > -1).any() else None,
                        "ap50": float(p_50[p_50 > -1].mean()) if (p_50 > -1).any() else None}
    return {"stats": stats, "mAP": stats["AP"], "per_class": per_class, "precision": precision,
            "recall": recall, "classes": labels}


def _summarize(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray) -> dict:
    areas = list(AREA_RANGES)

    def one(ap: bool, iou=None, area="all", max_det=100):
        a, m = areas.index(area), MAX_DETS.index(max_det)
        s = precision[:, :, :, a, m] if ap else recall[:, :, a, m]
        if iou is not None:
            s = s[np.where(iou == iou_thrs)[0]]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else None

    values = [one(True), one(True, .5), one(True, .75), one(True, area="small"),
              one(True, area="medium"), one(True, area="large"), one(False, max_det=1),
              one(False, max_det=10), one(False), one(False, area="small"),
              one(False, area="medium"), one(False, area="large")]
    return dict(zip(STAT_NAMES, values))
