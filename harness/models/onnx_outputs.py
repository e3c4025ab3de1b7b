"""Output conventions of ONNX detectors -> detbench's detections, one function per convention.

Every adapter takes the graph's outputs (``{name: numpy array}``), the
resolved :class:`~harness.models.onnx_source.Contract` and the batch's image
geometry and returns :class:`~harness.backends.base.Detections` in original
image pixels with the model's 0-based labels — what every other backend's
``postprocess`` returns.  ``yolo_raw`` is first decoded to the representation
of detbench's own decode-only exports (xyxy boxes in input pixels (N, A, 4),
per-class scores (N, A, C)) and finished by the same host NMS as mmyolo
models (:func:`harness.export.host_nms.host_postprocess`), so its decoded
tensors also serve the alignment analysis.
"""
from __future__ import annotations

import numpy as np

from harness.backends.base import Detections
from harness.errors import UserError


def to_xyxy_pixels(boxes: np.ndarray, contract, height: int, width: int) -> np.ndarray:
    """(..., 4) boxes in the contract's format -> xyxy in input pixels (float32)."""
    b = boxes.astype(np.float32, copy=True)
    if contract.normalized:
        b[..., 0::2] *= width
        b[..., 1::2] *= height
    if contract.box_format == "xywh":
        b[..., 2:] += b[..., :2]
    elif contract.box_format == "cxcywh":
        half = b[..., 2:] / 2
        b = np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)
    return b


def check_finite(outputs: dict, contract) -> None:
    for name, arr in outputs.items():
        a = np.asarray(arr)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise UserError(f"onnx.path ({contract.path}): output '{name}' holds {bad} NaN/Inf values")


def decode_yolo_raw(outputs: dict, contract, height: int, width: int):
    """``[N, 4+C, A]`` (v8/v11) or ``[N, A, 5+C]`` (v5, score = class * objectness) -> boxes, scores."""
    raw = np.asarray(outputs[contract.outputs["raw"]], dtype=np.float32)
    if contract.raw_layout == "v8":
        raw = raw.transpose(0, 2, 1)
        boxes, scores = raw[..., :4], raw[..., 4:]
    else:
        boxes, scores = raw[..., :4], raw[..., 5:] * raw[..., 4:5]
    return to_xyxy_pixels(boxes, contract, height, width), np.ascontiguousarray(scores)


def yolo_raw(outputs: dict, contract, metas, test_cfg, height: int, width: int) -> list[Detections]:
    from harness.compat import mmcv_ext
    from harness.export.host_nms import host_postprocess

    mmcv_ext.install()
    boxes, scores = decode_yolo_raw(outputs, contract, height, width)
    return [Detections(b.numpy(), s.numpy(), l.numpy())
            for b, s, l in host_postprocess(boxes, scores, metas, test_cfg)]


def end2end(outputs: dict, contract, metas, test_cfg, height: int, width: int) -> list[Detections]:
    """``num_dets [N, 1]``, ``boxes [N, K, 4]``, ``scores [N, K]``, ``labels [N, K]``."""
    names = contract.outputs
    num = np.asarray(outputs[names["num_dets"]]).reshape(len(metas), -1)[:, 0]
    boxes = to_xyxy_pixels(np.asarray(outputs[names["boxes"]]), contract, height, width)
    scores = np.asarray(outputs[names["scores"]], dtype=np.float32).reshape(len(metas), -1)
    labels = np.asarray(outputs[names["labels"]]).reshape(len(metas), -1)
    return [_final(boxes[i, :int(num[i])], scores[i, :int(num[i])], labels[i, :int(num[i])], meta)
            for i, meta in enumerate(metas)]


def dets(outputs: dict, contract, metas, test_cfg, height: int, width: int) -> list[Detections]:
    """One tensor ``[N, K, 6|7]``: box, score, class (and a batch index) in ``contract.columns``
    order; padding rows (score <= 0, or a negative batch index) are dropped."""
    arr = np.asarray(outputs[contract.outputs["dets"]], dtype=np.float32)
    pos, at = {}, 0
    for col in contract.columns:
        pos[col] = slice(at, at + (4 if col == "box" else 1))
        at += 4 if col == "box" else 1
    out = []
    for i, meta in enumerate(metas):
        rows = arr[i]
        keep = rows[:, pos["score"]][:, 0] > 0
        if "batch" in pos:
            keep &= rows[:, pos["batch"]][:, 0] >= 0
        rows = rows[keep]
        boxes = to_xyxy_pixels(rows[:, pos["box"]], contract, height, width)
        out.append(_final(boxes, rows[:, pos["score"]][:, 0], rows[:, pos["class"]][:, 0], meta))
    return out


def _final(boxes, scores, labels, meta) -> Detections:
    """Input-pixel xyxy detections after an in-graph NMS -> original pixels, clamped like mmyolo."""
    import torch

    from harness.export.host_nms import rescale_to_original

    b = rescale_to_original(torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4), meta)
    return Detections(b.numpy(), np.asarray(scores, np.float32).reshape(-1),
                      np.asarray(labels).reshape(-1).astype(np.int64))


ADAPTERS = {"end2end": end2end, "dets": dets, "yolo_raw": yolo_raw}


def relabel(detections: list[Detections], mapping: list[int], unscored: int) -> list[Detections]:
    """Model labels -> dataset category indices; labels outside the model's classes -> ``unscored``."""
    table = np.asarray(list(mapping) + [unscored], dtype=np.int64)
    out = []
    for d in detections:
        labels = np.asarray(d.labels, dtype=np.int64)
        labels = np.where((labels >= 0) & (labels < len(mapping)), labels, len(mapping))
        out.append(Detections(d.boxes, d.scores, table[labels]))
    return out
