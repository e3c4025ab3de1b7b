"""Plain-torch stand-in for mmcv's compiled ``mmcv._ext`` module.

mmcv-lite ships ``mmcv.ops`` as Python but not the compiled extension it
loads at import time, so ``import mmdet.models`` fails without this module.
Inference of the YOLO families needs exactly one compiled op, ``nms`` (mmcv's
``batched_nms`` reduces to it by offsetting boxes per class).  Every other
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


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv compiled op '{name}' is not available: detbench runs on mmcv-lite and "
            "provides only 'nms' in plain torch (harness.compat.mmcv_ext). Install full mmcv "
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
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    module.DETBENCH_STANDIN = True
    sys.modules["mmcv._ext"] = module
