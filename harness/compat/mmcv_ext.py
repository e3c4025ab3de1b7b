"""Plain-torch stand-in for mmcv's compiled ``mmcv._ext`` module.

mmcv-lite ships ``mmcv.ops`` as Python but not the compiled extension it
loads at import time, so ``import mmdet.models`` fails without this module.
Inference of the YOLO families needs exactly one compiled op, ``nms`` (mmcv's
``batched_nms`` reduces to it by offsetting boxes per class).  The rotated
family (RTMDet-R through mmrotate, see :mod:`harness.compat.mmrotate_compat`)
needs three more: ``nms_rotated`` and ``box_iou_rotated`` (backed by the exact
polygon IoU of :mod:`harness.geometry.rotated`) and
``diff_iou_rotated_sort_vertices_forward`` (the one compiled step of mmcv's
differentiable rotated IoU, used by mmrotate's ``RotatedIoULoss``).  Every other
name resolves to a function that raises, so a model that truly needs another
compiled op fails loudly at the call, naming the op, instead of at import.

The semantics follow mmcv's ``nms_cpu``: candidates are visited in
descending score order with a *stable* sort (equal scores keep their input
order), a box is suppressed when its IoU with a kept box is strictly greater
than the threshold, areas use ``(x2 - x1 + offset) * (y2 - y1 + offset)``, and
the kept indices are returned in visiting order.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types

_BLOCK = 256


def nms(boxes, scores, iou_threshold: float, offset: int = 0):
    """Greedy NMS, block-wise so that thousands of candidates stay fast."""
    import torch

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].float()
    area = (b[:, 2] - b[:, 0] + offset) * (b[:, 3] - b[:, 1] + offset)
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for start in range(0, len(b), _BLOCK):
        stop = min(start + _BLOCK, len(b))
        blk = slice(start, stop)
        kept_before = keep[:start].nonzero().flatten()
        if len(kept_before):
            iou = _iou(b[blk], area[blk], b[kept_before], area[kept_before], offset)
            keep[blk] &= ~(iou > iou_threshold).any(dim=1)
        inner = _iou(b[blk], area[blk], b[blk], area[blk], offset) > iou_threshold
        inner = torch.triu(inner, diagonal=1).cpu()
        local = keep[blk].cpu().clone()
        for i in range(stop - start):
            if local[i]:
                local &= ~inner[i]
        keep[blk] = local.to(keep.device)
    return order[keep]


def _iou(a, area_a, b, area_b, offset: int):
    import torch

    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_rotated(dets, scores, order, dets_sorted, labels, iou_threshold: float,
                multi_label: bool):
    """mmcv's ``_ext.nms_rotated`` (called by ``mmcv.ops.nms_rotated``): kept indices.

    ``dets`` is (N, 5) (cx, cy, w, h, angle in radians, mmcv's default clockwise
    convention, the same as mmrotate's ``rbox2qbox``) or (N, 6) with the label
    appended when ``multi_label``; then only boxes of the same label suppress
    each other.  ``order`` and ``dets_sorted`` (mmcv's presorted copies) are
    not needed: the visiting order is a *stable* descending sort of ``scores``.
    A box is suppressed when its IoU with a kept box is strictly greater than
    the threshold, as mmcv's CUDA kernel (its CPU kernel uses ``>=``; the two
    differ only for an IoU exactly at the threshold).
    """
    from harness.geometry import rotated

    boxes = dets[:, :5]
    if multi_label:
        return rotated.batched_nms_rotated(boxes, scores, labels, float(iou_threshold))
    return rotated.nms_rotated(boxes, scores, float(iou_threshold))


def box_iou_rotated(bboxes1, bboxes2, ious, mode_flag: int = 0, aligned: bool = False):
    """mmcv's ``_ext.box_iou_rotated``: writes IoU (mode 0) or IoF (mode 1, the intersection
    over the area of ``bboxes1``) into the preallocated flat ``ious`` (rows*cols, or rows
    when ``aligned``), as the compiled op does."""
    from harness.geometry import rotated

    if len(bboxes1) == 0 or len(bboxes2) == 0:
        return
    mode = "iof" if mode_flag == 1 else "iou"
    iou = rotated.rotated_iou(bboxes1, bboxes2, aligned=aligned, mode=mode)
    ious.copy_(iou.reshape(-1).to(ious.dtype))


#: mmcv's layout for the differentiable rotated IoU: 4 + 4 box corners, then 16 edge crossings;
#: the sorted polygon has at most 8 vertices plus the first one repeated
_INTERSECTION_OFFSET = 8
_MAX_NUM_VERT_IDX = 9


def diff_iou_rotated_sort_vertices_forward(vertices, mask, num_valid):
    """Indices (B, N, 9) int32 of each intersection polygon's vertices in angular order.

    The contract of mmcv's compiled kernel, in plain torch: ``vertices``
    (B, N, 24, 2) are centred on the valid vertices' mean, ``mask`` (B, N, 24)
    marks the valid ones.  Out: the valid vertices sorted by angle around the
    centre, the first repeated after the last, then padding with the index of
    an invalid edge crossing (a zero vertex, so the shoelace sum of
    ``calculate_area`` ignores it); fewer than 3 valid vertices give all
    padding (area 0).  Points that coincide (two identical boxes share their
    corners) are kept only once, so at most 8 distinct vertices remain; their
    order is the angle's, so the area is the polygon's whatever the kernel's
    tie-breaking.
    """
    import torch

    b, n, m, _ = vertices.shape
    v = vertices.detach()
    valid = mask.bool()
    angle = torch.atan2(v[..., 1], v[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, float("inf")))
    order = angle.argsort(dim=-1, stable=True)
    sorted_v = v.gather(2, order[..., None].expand(-1, -1, -1, 2))
    sorted_valid = valid.gather(2, order)
    # drop a vertex that coincides with the previous one in angular order
    scale = v.abs().amax(dim=(-1, -2), keepdim=True).clamp(min=1.0)[..., 0]
    close = (sorted_v[..., 1:, :] - sorted_v[..., :-1, :]).abs().amax(-1) <= 1e-6 * scale
    dup = torch.cat([torch.zeros_like(close[..., :1]), close & sorted_valid[..., :-1]], dim=-1)
    keep = sorted_valid & ~dup
    # stable compaction: kept vertices first, in angular order
    rank = torch.where(keep, torch.arange(m, device=v.device).expand(b, n, m),
                       torch.full_like(order, m))
    picked = order.gather(2, rank.argsort(dim=-1, stable=True))
    count = keep.sum(-1)  # (B, N)
    invalid_cross = ~valid[..., _INTERSECTION_OFFSET:]
    pad = (invalid_cross.int().argmax(-1) + _INTERSECTION_OFFSET)  # first invalid crossing
    slots = torch.arange(_MAX_NUM_VERT_IDX, device=v.device).expand(b, n, -1)
    cnt = count.clamp(max=_MAX_NUM_VERT_IDX - 1)[..., None]
    body = picked[..., :_MAX_NUM_VERT_IDX]
    first = picked[..., :1]
    idx = torch.where(slots < cnt, body, pad[..., None].expand(-1, -1, _MAX_NUM_VERT_IDX))
    idx = torch.where(slots == cnt, first.expand(-1, -1, _MAX_NUM_VERT_IDX), idx)
    idx = torch.where((count < 3)[..., None], pad[..., None].expand(-1, -1, _MAX_NUM_VERT_IDX),
                      idx)
    return idx.to(torch.int32)


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv compiled op '{name}' is not available: detbench runs on mmcv-lite and "
            "provides only 'nms', 'nms_rotated', 'box_iou_rotated' and "
            "'diff_iou_rotated_sort_vertices_forward' in plain torch (harness.compat.mmcv_ext). "
            "Install full mmcv "
            "to use models that need this op.")
    op.__name__ = name
    return op


class _ExtModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)


def install() -> None:
    """Put the stand-in at ``mmcv._ext`` unless a real compiled one is importable.

    The module gets a ``__spec__`` because mmengine probes ``mmcv._ext`` with
    ``pkgutil.find_loader``, which raises on a module without one.
    """
    if "mmcv._ext" in sys.modules:
        return
    try:
        importlib.import_module("mmcv._ext")
        return
    except ImportError:
        pass
    module = _ExtModule("mmcv._ext", __doc__)
    module.nms = nms
    module.nms_rotated = nms_rotated
    module.box_iou_rotated = box_iou_rotated
    module.diff_iou_rotated_sort_vertices_forward = diff_iou_rotated_sort_vertices_forward
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    module.DETBENCH_STANDIN = True
    sys.modules["mmcv._ext"] = module
