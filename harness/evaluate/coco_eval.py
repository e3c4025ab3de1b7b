"""COCO AP with pycocotools: the 12 summary statistics and per-class AP."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from harness.errors import UserError

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def to_coco_detections(image_id: int, boxes, scores, labels, category_ids) -> tuple[list[dict], int]:
    """Convert xyxy detections to COCO json entries; returns (entries, dropped).

    Labels beyond the dataset's categories (a COCO-80 model on a 3-class set)
    cannot be scored and are dropped; the caller reports how many.

    Every value equals Python's ``round(v, 3)`` (box) / ``round(v, 6)`` (score)
    of the float64 value, computed for the whole array at once: see
    :func:`round_like_python` (tests/test_coco_eval.py compares with the
    per-detection loop on every float32 pattern class that matters).
    """
    import numpy as np

    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return [], 0
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ok = labels < len(category_ids)
    dropped = int(labels.size - np.count_nonzero(ok))
    if dropped:
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2]
    np.subtract(boxes[:, 2:], boxes[:, :2], out=xywh[:, 2:])  # the same float64 subtraction as x2 - x1
    bbox = round_like_python(xywh, 3).tolist()
    score = round_like_python(scores, 6).tolist()
    cats = np.asarray(category_ids, dtype=np.int64)[labels.astype(np.int64)].tolist()
    image_id = int(image_id)
    return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cats, bbox, score)], dropped


def to_coco_rows(image_ids, detections, category_ids):
    """A whole batch at once: ``(rows (N, 7) float64, dropped)``, no per-detection Python.

    ``detections``: one ``(boxes, scores, labels)`` (or object with those attributes) per
    image id.  Rows are pycocotools' numpy result format ``[image_id, x, y, w, h, score,
    category_id]`` holding exactly the values :func:`to_coco_detections` puts in its
    entries (same rounding, same order); :func:`rows_to_detections` gives those entries
    back, and :func:`evaluate` takes the rows directly.
    """
    import numpy as np

    parts = [(d.boxes, d.scores, d.labels) if hasattr(d, "boxes") else d for d in detections]
    counts = [len(np.asarray(p[2]).reshape(-1)) for p in parts]
    if not sum(counts):
        return np.zeros((0, 7)), 0
    boxes = np.concatenate([np.asarray(p[0], dtype=np.float64).reshape(-1, 4) for p in parts])
    scores = np.concatenate([np.asarray(p[1], dtype=np.float64).reshape(-1) for p in parts])
    labels = np.concatenate([np.asarray(p[2]).reshape(-1) for p in parts]).astype(np.int64)
    ids = np.repeat(np.asarray([int(i) for i in image_ids], dtype=np.float64), counts)
    ok = labels < len(category_ids)
    dropped = int(labels.size - np.count_nonzero(ok))
    rows = np.empty((int(np.count_nonzero(ok)), 7))
    rows[:, 0] = ids[ok]
    xywh = boxes[ok]
    xywh[:, 2:] -= xywh[:, :2]  # the same float64 subtraction as x2 - x1
    rows[:, 1:5] = round_like_python(xywh, 3)
    rows[:, 5] = round_like_python(scores[ok], 6)
    rows[:, 6] = np.asarray(category_ids, dtype=np.float64)[labels[ok]]
    return rows, dropped


def rows_to_detections(rows) -> list[dict]:
    """The COCO json entries of :func:`to_coco_rows`'s rows (equal to :func:`to_coco_detections`')."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    ids = rows[:, 0].astype(np.int64).tolist()
    cats = rows[:, 6].astype(np.int64).tolist()
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(ids, cats, rows[:, 1:5].tolist(), rows[:, 5].tolist())]


def round_like_python(values, ndigits: int):
    """``round(v, ndigits)`` of every float64 in ``values``, vectorised, bit for bit.

    Python rounds the exact binary value half-to-even at ``ndigits`` decimals and
    returns the double nearest that decimal.  ``rint(v * 10**n) / 10**n`` does the
    same whenever ``v * 10**n`` is exact in float64 (the division is then correctly
    rounded to the same nearest double); it can differ only where the product
    rounds and lands within a rounding error of a half-integer, or is beyond
    2**52 (or is not finite).  Those rare elements (and non-finite ones) get Python's ``round`` itself.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    scale = 10.0 ** ndigits
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values * scale
        out = np.rint(scaled) / scale
        frac = np.abs(scaled - np.trunc(scaled))
        # the product's rounding error is at most half an ulp, < |scaled| * 2**-52; keep a wide margin
        margin = np.maximum(np.abs(scaled) * 2.0 ** -48, 1e-9)
        unsure = ~(np.abs(frac - 0.5) > margin) | ~(np.abs(scaled) < 2.0 ** 52)
    if unsure.any():
        flat_out, flat_in = out.reshape(-1), values.reshape(-1)
        for i in np.flatnonzero(unsure.reshape(-1)).tolist():
            v = float(flat_in[i])
            flat_out[i] = round(v, ndigits) if np.isfinite(v) else v
    return out


EVALUATORS = ("pycocotools", "faster-coco-eval")


def evaluate(ann_file: str | Path, detections, image_ids: list[int],
             evaluator: str = "pycocotools", *, copy: bool = True) -> dict:
    """Run COCOeval on the given images; returns stats, per-class AP and the log text.

    ``detections``: COCO json entries, or the (N, 7) rows of :func:`to_coco_rows`
    (turned into the same entries here: the statistics are identical).

    ``copy=False``: the caller's entries may be handed to ``loadRes`` as they are (it adds
    ``area``/``id`` keys to them); by default it gets a copy.

    ``evaluator``: ``pycocotools`` (the reference) or ``faster-coco-eval`` (its
    C++ reimplementation, same 12 statistics and precision array; tested equal to
    1e-6 on the fixture, tests/test_coco_eval.py).
    """
    if evaluator not in EVALUATORS:
        raise UserError(f"eval.evaluator: unknown evaluator '{evaluator}'; use one of {EVALUATORS}")
    if evaluator == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster as COCOeval
        except ImportError as exc:
            raise UserError("eval.evaluator: faster-coco-eval is not installed; install the extra "
                            "`pip install 'detbench[fast-eval]'` or use pycocotools") from exc
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        gt = COCO(str(ann_file))
        if hasattr(detections, "shape"):  # to_coco_rows' array: fresh entries, no json copy
            detections = rows_to_detections(detections)
            fresh = True
        else:
            fresh = not copy
        if not detections:  # nothing found: 0 where there was something to find, else undefined
            present = _gt_present(gt, image_ids)
            stats = {name: (0.0 if present[_area(name)] else None) for name in STAT_NAMES}
            return {"stats": stats, "per_class": [], "log": "no detections", "evaluator": evaluator}
        # loadRes adds keys to the entries it is given: hand it a copy of the caller's
        dt = gt.loadRes(detections if fresh else json.loads(json.dumps(detections)))
        if evaluator == "faster-coco-eval":
            ev = COCOeval(gt, dt, "bbox", print_function=print)
        else:
            ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: _defined(v) for name, v in zip(STAT_NAMES, ev.stats)}
    return {"stats": stats, "per_class": _per_class(gt, ev), "log": log.getvalue(),
            "evaluator": evaluator}


def _per_class(gt, ev) -> list[dict]:
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdets]
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        name = gt.cats[cat_id]["name"]
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        rows.append({"class_name": name,
                     "ap": float(p_all[p_all > -1].mean()) if (p_all > -1).any() else None,
                     "ap50": float(p_50[p_50 > -1].mean()) if (p_50 > -1).any() else None})
    return rows


def _defined(value) -> float | None:
    """pycocotools writes -1 for "undefined" (e.g. no small objects at all): that is None, not 0."""
    value = float(value)
    return None if value < 0 else value


_AREAS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}


def _area(stat: str) -> str:
    return next((a for a in _AREAS if stat.endswith(a)), "all")


def _gt_present(gt, image_ids) -> dict[str, bool]:
    """Whether the evaluated images hold any non-crowd ground truth, overall and per COCO area."""
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=list(image_ids))) if not a.get("iscrowd")]
    present = {a: any(lo <= x["area"] <= hi for x in anns) for a, (lo, hi) in _AREAS.items()}
    return {**present, "all": bool(anns)}
