"""Outputs of an in-graph NMS (ONNX NMS, EfficientNMS, BatchedNMS) → detections.

All three variants end in ``(num_dets, boxes, scores, labels)`` padded to
keep_topk, with boxes in input (letterboxed) pixels; this maps them to
original-image pixels exactly as mmyolo's rescale does.
"""
from __future__ import annotations

from harness.backends.base import Detections


def decode_nms_outputs(outputs, metas) -> list[Detections]:
    import torch

    from harness.export.host_nms import rescale_to_original

    num, boxes, scores, labels = (torch.as_tensor(o) for o in outputs)
    dets = []
    for i, meta in enumerate(metas):
        n = int(num[i].reshape(-1)[0])
        b = rescale_to_original(boxes[i, :n].float().reshape(-1, 4), meta)
        dets.append(Detections(b.numpy(), scores[i, :n].float().reshape(-1).numpy(),
                               labels[i, :n].long().reshape(-1).numpy()))
    return dets
