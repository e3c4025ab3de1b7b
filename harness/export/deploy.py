"""One traceable module: normalised images in, decoded (and optionally NMS'd) boxes out.

mmyolo decodes inside ``predict_by_feat``, interleaved with Python-side
filtering that cannot be exported.  This module re-plays only the decode part
(flatten the per-level maps, sigmoid, objectness, prior/stride tables and the
head's *own* ``bbox_coder``) as tensor ops with static spatial sizes, so the
exported graph equals mmyolo's decode by construction and only the batch
dimension is dynamic.

Rotated heads (RTMDet-R's ``RTMDetRotatedHead``, issue #19) decode the same way
with their angle branch: the head's ``angle_coder`` turns the angle maps into
radians and its ``bbox_coder`` (``DistanceAnglePointCoder``) turns distances +
angle into ``(cx, cy, w, h, angle)`` le90 boxes, as ``predict_by_feat`` does with
``decode_with_angle=True``.  Rotated graphs end at the decode (``nms='none'``): an
in-graph rotated NMS exists only as mmdeploy's TensorRT plugin TRTBatchedRotatedNMS,
which detbench's TensorRT flavours do not have (``harness.trt.capability``).

NMS variants append a detection stage:

* ``onnx``: standard ``NonMaxSuppression`` (runs on ONNX Runtime and TensorRT);
* ``efficient_nms`` / ``batched_nms``: TensorRT plugin nodes that only
  TensorRT executes; their torch forward returns placeholders of the right
  shapes so that tracing works.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from harness.errors import UserError

NMS_KINDS = ("none", "onnx", "efficient_nms", "batched_nms")

# The ONNX checker rejects unknown ops in the default domain, while TensorRT's
# ONNX parser looks plugins up by op_type (+ plugin_version) whatever the node
# domain, so the plugin nodes live in their own domain.
TRT_PLUGIN_DOMAIN = "trt"

# BatchedNMSDynamic_TRT refuses topK above this and cannot handle more input boxes
# (plugin/batchedNMSPlugin/README.md). Its caffeSemantics defaults to true (+1 on width and
# height in the IoU of unnormalised boxes), unlike mmcv: the node writes caffeSemantics=0.
BATCHED_NMS_MAX_TOPK = 4096

OUTPUT_NAMES = {
    "none": ("boxes", "scores"),
    "onnx": ("num_dets", "boxes", "scores", "labels"),
    "efficient_nms": ("num_dets", "det_boxes", "det_scores", "det_classes"),
    "batched_nms": ("num_dets", "det_boxes", "det_scores", "det_classes"),
}


def is_rotated(model) -> bool:
    """The detector's head predicts rotated boxes (it has an angle coder: RTMDetRotatedHead)."""
    return getattr(getattr(model, "bbox_head", None), "angle_coder", None) is not None


class DeployModel(nn.Module):
    """An mmyolo detector as one exportable function, so every backend runs the same graph.

    With ``nms='none'`` the outputs are ``boxes`` (N, A, 4) xyxy in input
    (letterboxed) pixels and ``scores`` (N, A, C): what ``predict_by_feat``
    holds before thresholding, top-k, NMS and rescale.  With an NMS variant the
    outputs are padded to ``keep_topk`` detections per image.  A rotated head
    gives ``boxes`` (N, A, 5) ``(cx, cy, w, h, angle)`` in input pixels, angle
    in radians (le90), and only ``nms='none'``.
    """

    def __init__(self, model, *, nms: str = "none", pre_topk: int = 1000, keep_topk: int = 100,
                 iou_thr: float = 0.65, score_thr: float = 0.25):
        super().__init__()
        if nms not in NMS_KINDS:
            raise UserError(f"unknown nms '{nms}': choose one of {', '.join(NMS_KINDS)}")
        if pre_topk < 1 or keep_topk < 1:
            raise UserError(f"pre_topk ({pre_topk}) and keep_topk ({keep_topk}) must be >= 1")
        self.model = model
        self.nms = nms
        self.rotated = is_rotated(model)
        if self.rotated and nms != "none":
            from harness.trt.capability import rotated_nms_problem

            raise UserError(str(rotated_nms_problem(nms)))
        if self.rotated and not (model.bbox_head.test_cfg or {}).get("decode_with_angle", True):
            raise UserError("test_cfg.decode_with_angle=False is not supported: mmyolo's "
                            "DistanceAnglePointCoder decodes (distances, angle) together; set it to "
                            "True (the rotated configs' default)")
        self.pre_topk, self.keep_topk = int(pre_topk), int(keep_topk)
        self.iou_thr, self.score_thr = float(iou_thr), float(score_thr)
        self._grids: dict = {}

    @property
    def head(self):
        return self.model.bbox_head

    def forward(self, images):
        return self.postprocess(*self.decode(self.head(self.model.extract_feat(images))))

    def postprocess(self, boxes, scores):
        """The NMS stage alone, so it can be checked on another backend's decode."""
        if self.nms == "none":
            return boxes, scores
        return _NMS_STAGES[self.nms](self, boxes, scores)

    def decode(self, raw):
        """Decode the head's eval-mode outputs ``(cls, reg[, obj])`` as predict_by_feat does.

        In eval mode every head already returns per-level box *distances*
        (YOLOv6/v8/PPYOLOE integrate their DFL bins inside forward), so the
        coder is the only decoding step left.
        """
        if self.rotated:
            return self._decode_rotated(*raw)
        cls_maps, reg_maps = raw[0], raw[1]
        obj_maps = raw[2] if len(raw) > 2 else None
        # int(): spatial sizes are fixed at export; priors become constants.
        sizes = [tuple(int(d) for d in m.shape[-2:]) for m in cls_maps]
        priors, strides = self._grid(sizes, cls_maps[0])
        scores = _flat_cat(cls_maps, self.head.num_classes).sigmoid()
        boxes = self.head.bbox_coder.decode(priors[None], _flat_cat(reg_maps, 4), strides)
        if obj_maps is not None:
            scores = scores * _flat_cat(obj_maps, 1).sigmoid()
        return boxes, scores

    def _decode_rotated(self, cls_maps, reg_maps, angle_maps):
        """RTMDetRotatedHead.predict_by_feat's decode (decode_with_angle=True): sigmoid scores,
        the angle coder's radians, then the bbox coder on (distances, angle).

        The coder's ``decode`` scales the distances by the stride *in place*
        (``pred[..., :4] = pred[..., :4] * stride``: an ONNX ScatterND); the same
        product is made out of place here and handed to the coder's own
        ``distance2obb`` (no ``max_shape``, as ``predict_by_feat`` calls it).
        """
        head = self.head
        coder = head.bbox_coder
        sizes = [tuple(int(d) for d in m.shape[-2:]) for m in cls_maps]
        priors, strides = self._grid(sizes, cls_maps[0])
        scores = _flat_cat(cls_maps, head.num_classes).sigmoid()
        angle = head.angle_coder.decode(_flat_cat(angle_maps, head.angle_out_dim), keepdim=True)
        dist = _flat_cat(reg_maps, 4) * strides[None, :, None]
        boxes = coder.distance2obb(priors[None], torch.cat([dist, angle], dim=-1), None,
                                   coder.angle_version)
        return boxes, scores

    def _grid(self, sizes, like):
        """Priors from the head's own generator, and mmyolo's per-prior stride table."""
        key = (tuple(sizes), like.dtype, like.device)
        if key not in self._grids:
            head = self.head
            priors = torch.cat(head.prior_generator.grid_priors(sizes, dtype=like.dtype,
                                                                device=like.device))
            strides = torch.cat([priors.new_full((h * w * head.num_base_priors,), stride)
                                 for (h, w), stride in zip(sizes, head.featmap_strides)])
            self._grids[key] = (priors, strides)
        return self._grids[key]


def _flat_cat(maps, width: int):
    """(N, P*width, H, W) per level -> (N, sum(H*W*P), width), mmyolo's prior order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, width) for m in maps], dim=1)


# --------------------------------------------------------------------------- onnx NMS

def _onnx_nms_stage(deploy: DeployModel, boxes, scores):
    """Pre-top-k on max class score, class-aware NMS, then the best keep_topk per image."""
    k = min(deploy.pre_topk, int(boxes.shape[1]))
    boxes, scores = _pre_topk(boxes, scores, k)
    selected = _OnnxNMS.apply(boxes, scores.transpose(1, 2), deploy.keep_topk, deploy.iou_thr,
                              deploy.score_thr)
    return _pad_per_image(boxes, scores, selected, deploy.keep_topk)


def _pre_topk(boxes, scores, k: int):
    idx = scores.amax(dim=-1).topk(k, dim=1).indices
    boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
    scores = scores.gather(1, idx[..., None].expand(-1, -1, scores.shape[-1]))
    return boxes, scores


def _pad_per_image(boxes, scores, selected, keep: int):
    """Turn NMS's flat (image, class, box) triples into per-image padded tensors.

    Every image sees all triples; those of other images score -1 and the
    ``keep`` padding columns guarantee TopK has enough entries, so the graph
    has no data-dependent loop and batch stays dynamic.
    """
    n, k, c = boxes.shape[0], int(boxes.shape[1]), int(scores.shape[2])
    img, cls, box = selected[:, 0], selected[:, 1], selected[:, 2]
    det_boxes = boxes.reshape(-1, 4)[img * k + box]
    det_scores = scores.reshape(-1)[(img * k + box) * c + cls]
    owner = img[None, :] == torch.arange(n, device=img.device)[:, None]
    dense = torch.where(owner, det_scores[None, :], torch.full_like(det_scores[None, :], -1.0))
    dense = torch.cat([dense, dense.new_full((n, keep), -1.0)], dim=1)
    top, pos = dense.topk(keep, dim=1)
    valid = top >= 0
    out_boxes = torch.cat([det_boxes, det_boxes.new_zeros((keep, 4))])[pos]
    out_labels = torch.cat([cls, cls.new_full((keep,), -1)])[pos]
    return (valid.sum(dim=1, keepdim=True).to(torch.int32),
            torch.where(valid[..., None], out_boxes, torch.zeros_like(out_boxes)),
            torch.where(valid, top, torch.zeros_like(top)),
            torch.where(valid, out_labels, torch.full_like(out_labels, -1)).to(torch.int32))


class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes (N, K, 4), scores (N, C, K) -> (M, 3) int64."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):
        with _untraced():
            return _reference_nms(boxes, scores, max_per_class, iou_thr, score_thr)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou_thr, torch.float32), const(score_thr, torch.float32),
                    center_point_box_i=0)


@contextlib.contextmanager
def _untraced():
    """Run the eager reference without recording it.

    The exporter replaces this Function by its symbolic anyway; recording the
    reference's per-class Python loop would only cost minutes of tracing.
    """
    get_state = getattr(torch._C, "_get_tracing_state", None)
    set_state = getattr(torch._C, "_set_tracing_state", None)
    state = get_state() if get_state and set_state else None
    if state is None:
        yield
        return
    set_state(None)
    try:
        yield
    finally:
        set_state(state)


def _reference_nms(boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):
    """Torch twin of ONNX NMS: per (image, class), strict thresholds, ties by index."""
    rows = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            kept = _greedy_nms(boxes[b], scores[b, c], iou_thr, score_thr, max_per_class)
            rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.long, device=boxes.device)
    return torch.cat(rows)


def _greedy_nms(boxes, scores, iou_thr: float, score_thr: float, limit: int):
    cand = (scores > score_thr).nonzero().flatten()
    cand = cand[scores[cand].argsort(descending=True, stable=True)]
    cb = boxes[cand]
    area = (cb[:, 2] - cb[:, 0]).clamp(min=0) * (cb[:, 3] - cb[:, 1]).clamp(min=0)
    alive = torch.ones(len(cand), dtype=torch.bool, device=boxes.device)
    kept: list[int] = []
    for i in range(len(cand)):
        if len(kept) >= limit:
            break
        if not bool(alive[i]):
            continue
        kept.append(i)
        lt = torch.maximum(cb[i, :2], cb[:, :2])
        rb = torch.minimum(cb[i, 2:], cb[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area - inter).clamp(min=torch.finfo(cb.dtype).tiny)
        alive &= ~(iou > iou_thr)
    return cand[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


# --------------------------------------------------------------------------- TensorRT plugins

def _efficient_nms_stage(deploy: DeployModel, boxes, scores):
    """Pre-top-k (as the other variants), then EfficientNMS_TRT.

    The plugin itself keeps only its 5000 best (box, class) scores above the threshold
    (4096 in its README), whatever the graph feeds it: see harness.trt.capability.
    """
    boxes, scores = _pre_topk(boxes, scores, min(deploy.pre_topk, int(boxes.shape[1])))
    return _EfficientNMS.apply(boxes, scores, deploy.iou_thr, deploy.score_thr, deploy.keep_topk)


def _batched_nms_stage(deploy: DeployModel, boxes, scores):
    """Pre-top-k to at most 4096 boxes, then BatchedNMSDynamic_TRT.

    Its README: topK <= 4096 and "cannot handle greater than 4096 rectangles in the input";
    all anchors (8400 at 640 px) would exceed that, so the graph feeds it the best boxes only.
    """
    top_k = min(deploy.pre_topk, int(boxes.shape[1]), BATCHED_NMS_MAX_TOPK)
    boxes, scores = _pre_topk(boxes, scores, top_k)
    num, det_boxes, det_scores, det_classes = _BatchedNMS.apply(
        boxes.unsqueeze(2), scores, deploy.iou_thr, deploy.score_thr, top_k, deploy.keep_topk,
        int(scores.shape[-1]))
    return num, det_boxes, det_scores, det_classes.to(torch.int32)  # the plugin emits float classes


def _placeholders(boxes, keep: int, class_dtype):
    """Right shapes and dtypes for tracing; TensorRT computes the real values."""
    n = boxes.shape[0]
    return (torch.zeros((n, 1), dtype=torch.int32, device=boxes.device),
            boxes.new_zeros((n, keep, 4)), boxes.new_zeros((n, keep)),
            torch.zeros((n, keep), dtype=class_dtype, device=boxes.device))


def _typed_outputs(outs, like, keep: int, dtypes):
    """Plugin outputs carry no ONNX schema: declare their types and shapes ourselves."""
    sizes = like.type().varyingSizes()
    batch = sizes[0] if sizes else None
    shapes = ([batch, 1], [batch, keep, 4], [batch, keep], [batch, keep])
    for out, dtype, shape in zip(outs, dtypes, shapes):
        out.setType(like.type().with_dtype(dtype).with_sizes(shape))
    return outs


class _EfficientNMS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boxes, scores, iou_thr: float, score_thr: float, keep: int):
        return _placeholders(boxes, keep, torch.int32)

    @staticmethod
    def symbolic(g, boxes, scores, iou_thr, score_thr, keep):
        outs = g.op(f"{TRT_PLUGIN_DOMAIN}::EfficientNMS_TRT", boxes, scores,
                    background_class_i=-1, box_coding_i=0, iou_threshold_f=float(iou_thr),
                    max_output_boxes_i=int(keep), plugin_version_s="1", score_activation_i=0,
                    score_threshold_f=float(score_thr), outputs=4)
        return _typed_outputs(outs, boxes, keep,
                              (torch.int32, torch.float32, torch.float32, torch.int32))


class _BatchedNMS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boxes, scores, iou_thr: float, score_thr: float, top_k: int, keep: int,
                num_classes: int):
        return _placeholders(boxes, keep, torch.float32)

    @staticmethod
    def symbolic(g, boxes, scores, iou_thr, score_thr, top_k, keep, num_classes):
        outs = g.op(f"{TRT_PLUGIN_DOMAIN}::BatchedNMSDynamic_TRT", boxes, scores,
                    shareLocation_i=1, backgroundLabelId_i=-1, numClasses_i=int(num_classes),
                    topK_i=int(top_k), keepTopK_i=int(keep), scoreThreshold_f=float(score_thr),
                    iouThreshold_f=float(iou_thr), isNormalized_i=0, clipBoxes_i=0,
                    caffeSemantics_i=0, plugin_version_s="1", outputs=4)
        return _typed_outputs(outs, boxes, keep,
                              (torch.int32, torch.float32, torch.float32, torch.float32))


_NMS_STAGES = {
    "onnx": _onnx_nms_stage,
    "efficient_nms": _efficient_nms_stage,
    "batched_nms": _batched_nms_stage,
}
