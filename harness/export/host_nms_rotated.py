"""Finish a rotated decode-only graph as RTMDet-R's ``predict_by_feat`` would.

Given ``boxes`` (N, A, 5) ``(cx, cy, w, h, angle)`` in input pixels and ``scores``
(N, A, C) of a rotated ``nms='none'`` export (:class:`harness.export.deploy.DeployModel`),
this applies the steps of ``RTMDetRotatedHead.predict_by_feat`` + mmdet's
``_bbox_post_process`` in their order:

1. score threshold and ``nms_pre`` top-k, per (prior, class) pair (``multi_label``)
   or on each prior's best class, with a *stable* sort (as :mod:`host_nms`);
2. letterbox undone: centres shifted by the pad (left, top), then
   ``RotatedBoxes.rescale_``'s rule with ``1 / scale_factor``: centres scaled, and for
   a uniform scale (keep-ratio resize) w/h scaled and the angle unchanged; a
   non-uniform scale follows the same rule (w/h by the axis-projected factors,
   angle by ``atan2``);
3. ``min_bbox_size`` filter, class-aware rotated NMS (:func:`harness.geometry.rotated.
   batched_nms_rotated`: exact polygon IoU, a box suppressed when its IoU with a kept box
   of its class is > ``iou_threshold``), ``max_per_img``.

mmdet reaches step 3 through mmcv's ``batched_nms``, which offsets rotated centres per
class and calls ``nms_rotated`` (in detbench: :mod:`harness.compat.mmcv_ext` on
:mod:`harness.geometry.rotated`); masking pairs of different labels is the same NMS
without the offset's loss of precision (tests/test_rotated_model.py checks equality with
``predict_by_feat``).  Rotated boxes are not clipped to the image (mmrotate does not
clip them either).  Everything runs on the tensors' device: CPU for host cells, the GPU
for CUDA cells.
"""
from __future__ import annotations


def rotated_postprocess(boxes, scores, metas, test_cfg, *, rescale: bool = True) -> list[tuple]:
    """Per image ``(rboxes (K, 5), scores (K,), labels (K,))`` torch tensors.

    ``rescale``: rboxes in original-image pixels (letterbox undone), else in input pixels.
    """
    import torch

    boxes, scores = torch.as_tensor(boxes).float(), torch.as_tensor(scores).float()
    if boxes.shape[-1] != 5:
        raise ValueError(f"rotated_postprocess: boxes of shape {tuple(boxes.shape)}, expected "
                         "(N, A, 5) (cx, cy, w, h, angle)")
    cfg = dict(test_cfg)
    return [_one_image(b, s, meta, cfg, rescale) for b, s, meta in zip(boxes, scores, metas)]


def _one_image(boxes, scores, meta: dict, cfg: dict, rescale: bool):
    from harness.export.host_nms import _select

    boxes, scores, labels = _select(boxes, scores, cfg)
    if rescale:
        boxes = rbox_to_original(boxes, meta)
    return _nms(boxes, scores, labels, cfg)


def rbox_to_original(boxes, meta: dict):
    """Input-pixel rotated boxes -> original-image pixels: pad offset, then 1 / scale_factor."""
    import torch

    pad = meta.get("pad_param")
    ctr, w, h, t = boxes[:, :2], boxes[:, 2:3], boxes[:, 3:4], boxes[:, 4:5]
    if pad is not None:
        ctr = ctr - ctr.new_tensor([pad[2], pad[0]])
    sx, sy = (1.0 / float(f) for f in meta["scale_factor"][:2])
    ctr = ctr * ctr.new_tensor([sx, sy])
    if sx == sy:
        return torch.cat([ctr, w * sx, h * sy, t], dim=1)
    cos, sin = torch.cos(t), torch.sin(t)
    w = w * torch.sqrt((sx * cos) ** 2 + (sy * sin) ** 2)
    h = h * torch.sqrt((sx * sin) ** 2 + (sy * cos) ** 2)
    return torch.cat([ctr, w, h, torch.atan2(sx * sin, sy * cos)], dim=1)


def _nms(boxes, scores, labels, cfg: dict):
    from harness.geometry.rotated import batched_nms_rotated

    min_size = cfg.get("min_bbox_size", -1)
    if min_size >= 0:
        wide = (boxes[:, 2] > min_size) & (boxes[:, 3] > min_size)
        boxes, scores, labels = boxes[wide], scores[wide], labels[wide]
    if boxes.numel() == 0:
        return boxes, scores, labels
    iou_thr = float(dict(cfg["nms"])["iou_threshold"])
    keep = batched_nms_rotated(boxes, scores, labels, iou_thr)
    limit = len(keep) if cfg.get("yolox_style", False) else cfg["max_per_img"]
    keep = keep[:limit]
    return boxes[keep], scores[keep], labels[keep]
