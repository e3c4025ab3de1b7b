"""Finish a decode-only graph on the host exactly as mmyolo's ``predict_by_feat`` would.

Given the ``boxes``/``scores`` of a ``nms='none'`` export, this applies the
same score threshold, ``nms_pre`` top-k, class-aware ``batched_nms``,
``max_per_img`` cut and rescale as ``YOLOv5Head.predict_by_feat`` (which every
detbench family uses), with mmdet/mmcv's own helpers, so a backend that only
runs the network is scored with mmyolo's postprocessing.

Equal scores are ordered by input position (a *stable* sort), in the top-k
and after NMS.  mmdet and mmcv sort with ``torch.sort`` (not stable), whose
order among ties is implementation-defined: the CPU and the GPU order them
differently, so mmyolo itself is not reproducible on exact ties.  Fixing the
order is what lets :mod:`harness.export.device_nms` equal this path exactly.

One step of mmyolo is deliberately absent: for objectness heads it first drops
priors whose objectness is <= score_thr.  That cannot change the result,
because score = cls * obj <= obj, so such priors never pass the score
threshold anyway (exactly, in floating point: rounding is monotone).
"""
from __future__ import annotations


def host_postprocess(boxes, scores, metas, test_cfg, *, rescale: bool = True) -> list[tuple]:
    """Per image ``(boxes (K, 4), scores (K,), labels (K,))`` torch tensors.

    ``boxes``/``scores`` are (N, A, 4) / (N, A, C) in input pixels (torch or
    numpy); with ``rescale`` the boxes come back in original-image pixels,
    clamped to the image.  Without it they stay in input pixels, unclamped
    (mmyolo would clamp input-space boxes to the *original* size, which only
    makes sense after rescaling).  Rotated boxes (N, A, 5) go through
    :func:`harness.export.host_nms_rotated.rotated_postprocess` (boxes (K, 5)).
    """
    import torch

    boxes, scores = torch.as_tensor(boxes).float(), torch.as_tensor(scores).float()
    if boxes.shape[-1] == 5:
        from harness.export.host_nms_rotated import rotated_postprocess

        return rotated_postprocess(boxes, scores, metas, test_cfg, rescale=rescale)
    cfg = dict(test_cfg)
    return [_one_image(b, s, meta, cfg, rescale) for b, s, meta in zip(boxes, scores, metas)]


def _one_image(boxes, scores, meta: dict, cfg: dict, rescale: bool):
    boxes, scores, labels = _select(boxes, scores, cfg)
    if rescale:
        boxes = _to_original(boxes, meta)
    boxes, scores, labels = _nms(boxes, scores, labels, cfg)
    if rescale:
        height, width = meta["ori_shape"][:2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
    return boxes, scores, labels


def _select(boxes, scores, cfg: dict):
    """Score threshold and ``nms_pre`` top-k, per (prior, class) pair or per prior."""
    score_thr, nms_pre = cfg.get("score_thr", -1), cfg.get("nms_pre", 100000)
    if cfg.get("multi_label", True) and scores.shape[1] > 1:
        scores, keep, labels = _filter_topk(scores, score_thr, nms_pre)
    else:
        scores, best = scores.max(1, keepdim=True)
        scores, keep, _ = _filter_topk(scores, score_thr, nms_pre)
        labels = best[keep, 0]
    return boxes[keep], scores, labels


def _filter_topk(scores, score_thr: float, topk: int):
    """mmdet's ``filter_scores_and_topk`` with a stable sort (its slicing quirks kept)."""
    import torch

    valid = scores > score_thr
    values = scores[valid]
    where = torch.nonzero(valid)
    num = min(topk, where.size(0))
    values, order = values.sort(descending=True, stable=True)
    keep, labels = where[order[:num]].unbind(dim=1)
    return values[:num], keep, labels


def _to_original(boxes, meta: dict):
    """Undo the letterbox: pad offset (top, bottom, left, right) first, then the scale.

    YOLOX's pipeline pads bottom/right only and records no ``pad_param``.
    """
    pad = meta.get("pad_param")
    if pad is not None:
        boxes = boxes - boxes.new_tensor([pad[2], pad[0], pad[2], pad[0]])
    return boxes / boxes.new_tensor(meta["scale_factor"]).repeat((1, 2))


def _nms(boxes, scores, labels, cfg: dict):
    """mmdet's ``_bbox_post_process``: min size filter, batched NMS, max_per_img."""
    from mmcv.ops import batched_nms

    min_size = cfg.get("min_bbox_size", -1)
    if min_size >= 0:
        wide = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
        boxes, scores, labels = boxes[wide], scores[wide], labels[wide]
    if boxes.numel() == 0:
        return boxes, scores, labels
    dets, keep = batched_nms(boxes, scores, labels, dict(cfg["nms"]))
    # mmcv's per-class branch (>= split_thr candidates) re-sorts by score without stability
    keep, pos = keep.sort(stable=True)
    order = dets[pos, -1].sort(descending=True, stable=True).indices
    keep, dets = keep[order], dets[pos[order]]
    # yolox_style keeps every NMS survivor instead of cutting at max_per_img
    limit = len(keep) if cfg.get("yolox_style", False) else cfg["max_per_img"]
    return boxes[keep][:limit], dets[:, -1][:limit], labels[keep][:limit]


def rescale_to_original(boxes, meta: dict):
    """Input-pixel boxes (an in-graph NMS's output) → original-image pixels, clamped like mmyolo."""
    boxes = _to_original(boxes, meta)
    height, width = meta["ori_shape"][:2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes
